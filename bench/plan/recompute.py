"""The memory a checkpointed segment needs again in backward.

Activation checkpointing (HF ``gradient_checkpointing``, :func:`~lightning_modules.models.chunked.embed_in_chunks`,
:func:`~lightning_modules.losses.llm2vec_gen.chunked_reconstruction_loss`) keeps only a segment's inputs in
forward, and backward recomputes the segment, holding its activations until its gradient is done. So the
backward peak adds, per nesting level, the largest segment's saved activations. :class:`SegmentMeter`
counts them: it replaces ``torch.utils.checkpoint.checkpoint`` at those call sites with a function that
first runs the segment once without checkpointing under its own :class:`SavedTensors` (on meta tensors this
costs nothing but time), then checkpoints it as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack

import torch
from torch import nn

from bench.plan.meter import SavedTensors
from lightning_modules.losses import llm2vec_gen as llm2vec_gen_losses
from lightning_modules.models import chunked

PATCHED_MODULES = (chunked, llm2vec_gen_losses)


class SegmentMeter:
    """``per_level[d]``: the largest saved bytes of a checkpointed segment at nesting depth ``d``."""

    def __init__(self, models: nn.Module, exclude: Iterable[torch.Tensor]):
        self.models = models
        self.exclude = list(exclude)
        self.per_level: dict[int, int] = {}
        self.depth = 0
        self._stack = ExitStack()

    @property
    def bytes(self) -> int:
        return sum(self.per_level.values())

    def measuring(self, checkpoint_fn):
        def checkpoint(function, *args, **kwargs):
            self.depth += 1
            try:
                with SavedTensors(self.exclude) as saved, torch.enable_grad():
                    function(*args)
                self.per_level[self.depth] = max(self.per_level.get(self.depth, 0), saved.bytes)
            finally:
                self.depth -= 1
            return checkpoint_fn(function, *args, **kwargs)

        return checkpoint

    def _replace(self, owner: object, name: str) -> None:
        original = getattr(owner, name)
        setattr(owner, name, self.measuring(original))
        self._stack.callback(setattr, owner, name, original)

    def __enter__(self) -> SegmentMeter:
        for module in PATCHED_MODULES:
            self._replace(module, "checkpoint")
        for layer in self.models.modules():
            if getattr(layer, "gradient_checkpointing", False) and hasattr(
                layer, "_gradient_checkpointing_func"
            ):
                self._replace(layer, "_gradient_checkpointing_func")
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
