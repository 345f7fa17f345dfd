"""Top-k search of a corpus: exact inner-product search over dense embeddings, and the block-wise top-k
that every corpus search here reduces to (DREAM's mining, Rabtriever's retrieval and on-policy picks)."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
            (float32, CPU); any model: a dot product, a predictor over stored states.
        num_queries / num_documents: ``Q`` and ``N``.
        k: documents kept per query.
        block_size: documents scored per call (memory is ``Q × block_size`` per call, ``Q × N`` in all).

    Example: ``top_k_in_blocks(lambda s, e: torch.arange(s, e).float().expand(1, -1), 1, 5, 2, 2)``
    returns ``(tensor([[4., 3.]]), tensor([[4, 3]]))``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    scores = torch.empty(num_queries, num_documents)
    for start in range(0, num_documents, block_size):
        end = min(start + block_size, num_documents)
        scores[:, start:end] = score_block(start, end)
    top = scores.topk(min(k, num_documents), dim=1)
    return top.values, top.indices


def exact_top_k(
    queries: torch.Tensor, documents: torch.Tensor, k: int, chunk: int = 1024, use_faiss: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices ``[Q, k]`` of the best documents for each query, by inner product.

    ``use_faiss`` uses a faiss ``IndexFlatIP`` (exact, faster on large corpora); the torch path processes
    queries in chunks so memory stays ``chunk × N``, in float32 even inside a bf16 autocast region (a bf16
    matmul rounds cosines to 2⁻⁸, enough to reorder close documents).
    """
    k = min(k, documents.shape[0])
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(documents.shape[1])
        index.add(documents.float().contiguous().numpy())
        scores, indices = index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()
    all_scores, all_indices = [], []
    corpus = documents.float()
    with torch.autocast(device_type=corpus.device.type, enabled=False):  # fp32 scores under bf16 training too
        for start in range(0, queries.shape[0], chunk):
            block = queries[start : start + chunk].float()
            scores, indices = top_k_in_blocks(
                lambda s, e, q=block: q @ corpus[s:e].T, len(block), len(corpus), k, max(len(corpus), 1)
            )
            all_scores.append(scores)
            all_indices.append(indices)
    return torch.cat(all_scores), torch.cat(all_indices)
