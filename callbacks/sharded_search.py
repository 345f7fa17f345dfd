"""A corpus index that no rank holds whole: each rank encodes and keeps its own shard, searches it in
chunks on its own device, and the per-rank top-k are merged (docs/evaluation.md, "At scale").

Per rank: the shard's embeddings in ``index_dtype`` (half precision by default: 1.5 GB per million
768-dim documents), encoded in pieces so the float32 encoder output never exists for the whole shard;
the search (``retrieval.search.chunked_top_k``) holds one float32 document chunk and one block of scores.
Across ranks only the queries (all-gathered) and each rank's ``[Q, k]`` scores and indices travel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch

from lightning_modules.distributed import call_through_strategy
from retrieval.search import chunked_top_k, merge_top_k

INDEX_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ENCODE_PIECE = 65_536  # texts per encoder call when building a shard (its float32 output: 192 MiB at H=768)


def index_dtype_of(name: str) -> torch.dtype:
    if name not in INDEX_DTYPES:
        raise ValueError(f"unknown index_dtype '{name}' (choose from: {', '.join(INDEX_DTYPES)})")
    return INDEX_DTYPES[name]


def shard_bounds(count: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, end)`` of ``rank``'s contiguous shard when ``count`` items are split into equal shards
    of ``ceil(count / world_size)`` (the last shards may be short or empty)."""
    per_rank = math.ceil(count / world_size)
    start = min(rank * per_rank, count)
    return start, min(start + per_rank, count)


def padded_shard(texts: list[str], world: int, rank: int) -> tuple[list[str], int, int]:
    """This rank's texts padded with copies of ``texts[0]`` to ``ceil(N / world)`` (every rank then runs
    the same number of encoder batches, as FSDP's collectives need), and its ``[start, end)``."""
    start, end = shard_bounds(len(texts), world, rank)
    per_rank = math.ceil(len(texts) / world)
    return texts[start:end] + [texts[0]] * (per_rank - (end - start)), start, end


def encode_sharded(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    method: str,
    texts: list[str],
    show_progress: bool = False,
) -> torch.Tensor:
    """Encode ``texts`` with ``pl_module.<method>`` split across ranks; every rank returns all ``[N, H]``
    (for the queries, and for mteb's encoder calls; the corpus uses :func:`encode_local_shard`)."""
    world, rank = trainer.world_size, trainer.global_rank

    def encode(shard: list[str]) -> torch.Tensor:
        return call_through_strategy(trainer, pl_module, method, shard, show_progress)

    if world == 1 or not texts:
        return encode(texts)
    shard, _, _ = padded_shard(texts, world, rank)
    local = encode(shard).to(trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(local)  # [world, per_rank, H]
    return gathered.reshape(world * len(shard), -1)[: len(texts)].cpu()


def encode_local_shard(
    encode: Callable[[list[str]], torch.Tensor],
    texts: list[str],
    world: int,
    rank: int,
    dtype: torch.dtype,
    piece: int = ENCODE_PIECE,
) -> tuple[torch.Tensor, int]:
    """This rank's shard of ``texts`` encoded by ``encode`` in pieces of ``piece`` texts and stored in
    ``dtype`` (CPU): ``([end − start, H], start)``. The padding rows of a short shard are encoded, then
    dropped. A float16 index refuses values beyond float16's range rather than storing infinities."""
    shard, start, end = padded_shard(texts, world, rank)
    out: torch.Tensor | None = None
    for offset in range(0, len(shard), piece):
        values = encode(shard[offset : offset + piece])
        if dtype == torch.float16 and values.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError(
                f"document embeddings reach |x| = {float(values.abs().max()):.4g}, beyond float16's range: "
                "set callbacks.retrieval_eval.index_dtype=bfloat16 (or float32)"
            )
        if out is None:
            out = torch.empty(len(shard), values.shape[1], dtype=dtype)
        out[offset : offset + len(values)] = values
    if out is None:
        raise ValueError("encode_local_shard needs at least one text")
    return out[: end - start], start


def sharded_top_k(
    trainer: L.Trainer,
    queries: torch.Tensor,
    local_documents: torch.Tensor,
    offset: int,
    num_documents: int,
    k: int,
    use_faiss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query's top-k over the whole corpus when each rank holds rows ``offset …`` of it: a chunked
    exact search of the local shard on this rank's device, then the ranks' ``[Q, k]`` merged. Every rank
    returns the same CPU ``(scores, corpus indices)``."""
    k = min(k, num_documents)
    device = trainer.strategy.root_device
    scores, indices = chunked_top_k(queries, local_documents.to(device), k, use_faiss=use_faiss)
    indices = indices + offset
    if trainer.world_size == 1:
        return scores.cpu(), indices.cpu()
    missing = k - scores.shape[1]  # a shard with fewer than k documents (or none)
    scores = torch.nn.functional.pad(scores, (0, missing), value=float("-inf"))
    indices = torch.nn.functional.pad(indices, (0, missing), value=-1)
    all_scores = trainer.strategy.all_gather(scores)  # [world, Q, k]
    all_indices = trainer.strategy.all_gather(indices)
    merged_scores, merged_indices = all_scores[0], all_indices[0]
    for other in range(1, trainer.world_size):
        merged_scores, merged_indices = merge_top_k(
            merged_scores, merged_indices, all_scores[other], all_indices[other], k
        )
    return merged_scores.cpu(), merged_indices.cpu()
