"""Shared model components: the trainable Embedder, the frozen causal LM, and the model registry."""

from lightning_modules.models.embedder import Embedder
from lightning_modules.models.frozen_lm import FrozenCausalLM, load_frozen_lm
from lightning_modules.models.registry import resolve_model_path

__all__ = ["Embedder", "FrozenCausalLM", "load_frozen_lm", "resolve_model_path"]
