"""Load a trained module back from a Lightning checkpoint, weights only, for the tools that read runs
(``experiments.evaluate``, ``experiments.decode``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def hyperparameters(checkpoint: str | Path) -> dict[str, Any]:
    """The module arguments stored in a checkpoint (read memory-mapped, weights only)."""
    stored = torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    return dict(stored.get("hyper_parameters") or {})


def with_tiny_flag(arguments: dict[str, Any], tiny: bool) -> dict[str, Any]:
    """``tiny`` set in every model block (a dict with ``name_or_path``) of the module arguments."""
    return {
        key: {**value, "tiny": tiny}
        for key, value in arguments.items()
        if isinstance(value, dict) and "name_or_path" in value
    }


def load_module(module_class: Any, checkpoint: str | Path, tiny: bool | None = None) -> Any:
    """``module_class.load_from_checkpoint`` on CPU, weights only, in eval mode; ``tiny`` (when given)
    overrides the model blocks' flag (checkpoints of ``debug=tiny`` runs carry it already)."""
    overrides = with_tiny_flag(hyperparameters(checkpoint), tiny) if tiny is not None else {}
    module = module_class.load_from_checkpoint(
        str(checkpoint), map_location="cpu", weights_only=True, **overrides
    )
    return module.eval()
