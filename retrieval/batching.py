"""Length-bucketed batching without gradients: the one loop every bulk encoder and scorer runs.

Items are sorted by decreasing length (stable, so equal lengths keep their input order), cut into
batches of ``batch_size`` that hold similar lengths (little padding), computed, and written back in
input order. Used by the embedder's ``encode``, LLM2Vec-Gen's ``encode``, Rabtriever's teacher scores
and document states, and LLM-Embedder's teacher likelihoods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def map_in_length_order(
    lengths: Sequence[int],
    batch_size: int,
    compute: Callable[[list[int]], torch.Tensor],
    desc: str | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """``out[i] = compute(batch)[row of i]`` for every item, batches taken in decreasing ``lengths``.

    Args:
        lengths: one length per item (tokens, characters: whatever groups similar items).
        batch_size: items per ``compute`` call.
        compute: maps the input positions of one batch to a ``[len(batch), ...]`` tensor (on the CPU).
        desc / show_progress: an optional progress bar over the batches.

    Returns:
        ``[len(lengths), ...]`` in input order, with the dtype and trailing shape ``compute`` returned.

    Example: ``map_in_length_order([1, 3, 2], 2, lambda idx: torch.tensor(idx))`` computes ``[1, 2]``
    then ``[0]`` and returns ``tensor([0, 1, 2])``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lengths:
        raise ValueError("map_in_length_order needs at least one item (callers return an empty result)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: torch.Tensor | None = None
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not show_progress, leave=False):
        index = order[start : start + batch_size]
        values = compute(index)
        if out is None:
            out = torch.empty((len(order), *values.shape[1:]), dtype=values.dtype)
        out[index] = values
    return out
