"""Corpus encodings of the start model, reused by every evaluation that sees the same model and texts.

The key is what determines the encodings: the module's untrained-score key (backbone, pooling, length,
instructions, precision: ``CachesUntrainedScore``), a fingerprint of its trainable state (so a changed
model never reads another model's encodings), the module class, the texts, the index dtype and this
rank's shard. Entries are checksummed tensors under ``<cache>/encodings/`` (``retrieval.cache``): a damaged
one is recomputed. Only step-0 encodings are stored (one corpus per start, reused by every run and
method that starts there); later evaluations encode afresh.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_modules.protocols import CachesUntrainedScore
from retrieval.cache import cache_key, cache_root


def trainable_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 of every trainable parameter's name, dtype, shape and bytes (this rank's values)."""
    digest = hashlib.sha1()
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        values = parameter.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)}".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encodings_path(
    trainer: L.Trainer, pl_module: L.LightningModule, texts: list[str], index_dtype: str
) -> Path | None:
    """Where this rank's step-0 shard of ``texts`` is cached; None when it is not cached (a later step, or
    a module that does not describe its start)."""
    description = pl_module.untrained_score_key() if isinstance(pl_module, CachesUntrainedScore) else None
    if trainer.global_step != 0 or description is None:
        return None
    key: dict[str, Any] = {
        "module": description,
        "class": type(pl_module).__qualname__,
        "trainable": trainable_fingerprint(pl_module),
        "index_dtype": index_dtype,
        "world": trainer.world_size,
        "rank": trainer.global_rank,
    }
    return cache_root() / "encodings" / f"{cache_key(key, texts)}.pt"
