"""A released LLM2Vec teacher: the base model with its MNTP adapter merged, then its SimCSE adapter merged.

LLM2Vec-Gen's reference loads ``McGill-NLP/LLM2Vec-<backbone>-mntp`` (a LoRA adapter whose config names the
base model), merges it, and applies ``…-mntp-unsup-simcse`` on top (docs/llm2vec_gen.md). Merging the second
adapter too gives the same function as keeping it as a PEFT layer, in one plain folder that the teacher
:class:`Embedder` loads with ``attention: bidirectional``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel

from lightning_modules.models.frozen_lm import load_tokenizer, parse_dtype
from lightning_modules.models.registry import ModelNotFoundError, resolve_model_path


class AdapterMismatchError(ModelNotFoundError):
    """An adapter's weights do not fit the model they are loaded onto (no usable model: a user error)."""


def adapter_config(adapter: str):
    """The adapter's ``PeftConfig``; a clear error when it cannot be read (missing, or offline)."""
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"adapter '{adapter}' cannot be loaded ({type(err).__name__}: {str(err)[:200]}); name a local "
            "folder holding adapter_config.json, or allow hub downloads (offline=false)"
        ) from None


def adapter_base_model(adapter: str) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path`` of its adapter config)."""
    return adapter_config(adapter).base_model_name_or_path


def merge_adapter(model: nn.Module, adapter: str) -> nn.Module:
    """Load the LoRA ``adapter`` onto ``model``, check every saved tensor found its place, and merge it."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    peft_model = PeftModel.from_pretrained(model, adapter, config=adapter_config(adapter))
    saved = load_peft_weights(adapter, device="cpu")
    loaded = get_peft_model_state_dict(peft_model)
    misplaced = [key for key in saved if key not in loaded]
    if misplaced or not saved:
        raise AdapterMismatchError(
            f"adapter '{adapter}' does not fit {type(model).__name__}: {len(misplaced)} of {len(saved)} "
            f"saved tensors have no place in the model (first: {misplaced[:2]})"
        )
    for key, value in saved.items():
        if not torch.equal(loaded[key].cpu(), value.to(loaded[key].dtype)):
            raise AdapterMismatchError(f"adapter '{adapter}': tensor '{key}' was not loaded as saved")
    return peft_model.merge_and_unload()


def save_released_teacher(
    out: Path,
    mntp_adapter: str,
    simcse_adapter: str,
    base: str | None = None,
    dtype: str = "float32",
    tiny: bool = False,
) -> dict[str, str]:
    """Base ← MNTP adapter (merged) ← SimCSE adapter (merged), saved with the tokenizer into ``out``.

    ``base`` defaults to the MNTP adapter's own base model; the tokenizer is the MNTP repository's when it
    ships one (as the reference), else the base model's. Returns what was merged.
    """
    base = base or adapter_base_model(mntp_adapter)
    model = AutoModel.from_pretrained(resolve_model_path(base, tiny=tiny), dtype=parse_dtype(dtype))
    model = merge_adapter(model, mntp_adapter)
    model = merge_adapter(model, simcse_adapter)
    model.save_pretrained(out)
    try:
        tokenizer = load_tokenizer(mntp_adapter)
    except (OSError, ValueError):
        tokenizer = load_tokenizer(resolve_model_path(base, tiny=tiny))
    tokenizer.save_pretrained(out)
    return {"base": base, "mntp_adapter": mntp_adapter, "simcse_adapter": simcse_adapter}
