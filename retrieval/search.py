"""Top-k search of a corpus: exact inner-product search over dense embeddings, and the block-wise top-k
that every corpus search here reduces to (DREAM's mining, Rabtriever's retrieval and on-policy picks).

No search holds a full ``[queries, documents]`` score matrix: documents are scored a chunk at a time and
each query keeps a running top-k, merged with every chunk's (``merge_top_k``); the same merge joins the
per-rank top-k of a sharded corpus (``callbacks/sharded_search.py``, docs/evaluation.md "At scale").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DOCUMENT_CHUNK = 32_768  # documents scored per matmul: a [1024, 32768] fp32 block is 128 MiB


def merge_top_k(
    scores: torch.Tensor, indices: torch.Tensor, more_scores: torch.Tensor, more_indices: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` (scores, indices) per row of two ``[Q, ·]`` candidate lists, best first.

    Example: ``merge_top_k(tensor([[3., 1.]]), tensor([[7, 2]]), tensor([[2.]]), tensor([[9]]), 2)``
    returns ``(tensor([[3., 2.]]), tensor([[7, 9]]))``.
    """
    all_scores = torch.cat([scores, more_scores], dim=1)
    top = all_scores.topk(min(k, all_scores.shape[1]), dim=1)
    return top.values, torch.cat([indices, more_indices], dim=1).gather(1, top.indices)


def top_k_in_blocks(
    score_block: Callable[[int, int], torch.Tensor],
    num_queries: int,
    num_documents: int,
    k: int,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices ``[Q, k]`` of every query's ``k`` best documents (``k`` capped at the corpus size).

    Args:
        score_block: ``score_block(start, end)`` → ``[Q, end − start]`` scores of documents ``start … end−1``
            (any model: a dot product, a predictor over stored states), all on one device; scored in
            float32, returned on that device.
        num_queries / num_documents: ``Q`` and ``N``.
        k: documents kept per query.
        block_size: documents scored per call; memory is ``Q × (block_size + k)``, never ``Q × N``: each
            block's best ``k`` are merged into a running top-k.

    Example: ``top_k_in_blocks(lambda s, e: torch.arange(s, e).float().expand(1, -1), 1, 5, 2, 2)``
    returns ``(tensor([[4., 3.]]), tensor([[4, 3]]))``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    k = min(k, num_documents)
    scores, indices = torch.empty(num_queries, 0), torch.empty(num_queries, 0, dtype=torch.long)
    for start in range(0, num_documents, block_size):
        end = min(start + block_size, num_documents)
        block = score_block(start, end).float()
        if start == 0:
            scores, indices = scores.to(block.device), indices.to(block.device)
        block_top = block.topk(min(k, end - start), dim=1)
        scores, indices = merge_top_k(scores, indices, block_top.values, block_top.indices + start, k)
    return scores, indices


def chunked_top_k(
    queries: torch.Tensor,
    documents: torch.Tensor,
    k: int,
    query_block: int = 1024,
    document_chunk: int = DOCUMENT_CHUNK,
    use_faiss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k of ``documents`` (any float dtype, e.g. a half-precision index) per query.

    Each block of ``query_block`` queries is scored against the documents a float32 chunk at a time
    (``top_k_in_blocks``), in float32 also under bf16 autocast (a bf16 matmul rounds cosines to 2⁻⁸,
    enough to reorder close documents), so the scores are those of the float32 matmul over the stored values. Memory beyond the
    inputs: one float32 chunk and a ``query_block × (document_chunk + k)`` block of scores. ``use_faiss``
    searches a faiss ``IndexFlatIP`` instead (exact, CPU; it holds a float32 copy of ``documents``, added
    a chunk at a time). Runs on the documents' device; returns ``[Q, min(k, N)]`` float32 scores and int64
    indices there.
    """
    if documents.ndim != 2 or queries.ndim != 2 or queries.shape[1] != documents.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and documents {tuple(documents.shape)} must be [·, H]"
        )
    device, k = documents.device, min(k, documents.shape[0])
    queries = queries.to(device, torch.float32)
    if use_faiss:
        return faiss_top_k(queries, documents, k, document_chunk)
    blocks = []
    with torch.autocast(device_type=device.type, enabled=False):
        for q in range(0, queries.shape[0], query_block):
            block = queries[q : q + query_block]
            blocks.append(
                top_k_in_blocks(
                    lambda s, e, block=block: block @ documents[s:e].float().T,
                    len(block),
                    documents.shape[0],
                    k,
                    document_chunk,
                )
            )
    if not blocks:
        return torch.empty(0, k, device=device), torch.empty(0, k, dtype=torch.long, device=device)
    # .to(device): an empty shard (no documents) gives CPU tensors; the ranks' all-gather needs them here
    return torch.cat([s for s, _ in blocks]).to(device), torch.cat([i for _, i in blocks]).to(device)


def faiss_top_k(
    queries: torch.Tensor, documents: torch.Tensor, k: int, document_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k with a faiss ``IndexFlatIP`` filled a float32 chunk at a time (on the documents' device)."""
    import faiss

    index = faiss.IndexFlatIP(documents.shape[1])
    for start in range(0, documents.shape[0], document_chunk):
        index.add(documents[start : start + document_chunk].float().cpu().contiguous().numpy())
    scores, indices = index.search(queries.cpu().contiguous().numpy(), k)
    return torch.from_numpy(scores).to(documents.device), torch.from_numpy(indices).long().to(
        documents.device
    )


def exact_top_k(
    queries: torch.Tensor, documents: torch.Tensor, k: int, chunk: int = 1024, use_faiss: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices ``[Q, k]`` of the best documents for each query, by inner product.

    ``chunked_top_k`` with ``chunk`` queries per block: memory stays ``chunk × (DOCUMENT_CHUNK + k)``
    scores, float32 even inside a bf16 autocast region; ``use_faiss`` searches a faiss ``IndexFlatIP``.
    """
    return chunked_top_k(queries, documents, k, query_block=chunk, use_faiss=use_faiss)
