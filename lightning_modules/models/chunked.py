"""Micro-batched encoding with gradients: embed a large batch in chunks, keeping only each chunk's output.

``embed_in_chunks(embed, ids, mask, n)`` equals ``embed(ids, mask)`` (same values, same gradients), but each
chunk of ``n`` rows runs under non-reentrant activation checkpointing: the forward keeps only the chunk's
inputs and embeddings, and backward recomputes one chunk at a time. Peak activation memory is one chunk's
instead of the whole batch's, for one extra forward (docs/scale.md, "On a cluster"). Dropout draws the
same mask in the recompute (the RNG state is preserved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def embed_in_chunks(
    embed: EmbedFn, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``embed(input_ids, attention_mask)`` computed ``chunk_size`` rows at a time (0: all at once).

    Without gradients (evaluation) or with one chunk, it is a plain call.
    """
    if chunk_size < 0:
        raise ValueError(f"encode_chunk_size must be >= 0, got {chunk_size}")
    rows = input_ids.shape[0]
    if chunk_size == 0 or rows <= chunk_size or not torch.is_grad_enabled():
        return embed(input_ids, attention_mask)
    chunks = [
        checkpoint(
            embed,
            input_ids[start : start + chunk_size],
            attention_mask[start : start + chunk_size],
            use_reentrant=False,
        )
        for start in range(0, rows, chunk_size)
    ]
    return torch.cat(chunks)


@contextmanager
def checkpointed_layers(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Recompute ``model``'s transformer layers in backward for the calls made inside this block.

    For a frozen LM that gradients flow through (LLM2Vec-Gen): transformers checkpoints a layer only when
    the layer is in training mode, and a frozen LM stays in eval mode. Only the layers' own ``training``
    flag is set here, not their children's, so dropout stays off; callers pass ``use_cache=False`` (a
    recomputed layer would extend a key/value cache a second time). Gradients are unchanged.
    """
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)] if enabled else []
    saved = [
        (m, m.training, m.gradient_checkpointing, getattr(m, "_gradient_checkpointing_func", None))
        for m in layers
    ]
    for layer in layers:
        layer.training, layer.gradient_checkpointing = True, True
        layer._gradient_checkpointing_func = lambda function, *args: checkpoint(
            function, *args, use_reentrant=False
        )
    try:
        yield
    finally:
        for layer, training, flag, function in saved:
            layer.training, layer.gradient_checkpointing = training, flag
            if function is None:
                del layer._gradient_checkpointing_func
            else:
                layer._gradient_checkpointing_func = function
