"""Exact top-k search over dense embeddings (inner product = cosine for normalised embeddings)."""

from __future__ import annotations

import torch


def exact_top_k(
    queries: torch.Tensor, documents: torch.Tensor, k: int, chunk: int = 1024, use_faiss: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices ``[Q, k]`` of the best documents for each query, by inner product.

    ``use_faiss`` uses a faiss ``IndexFlatIP`` (exact, faster on large corpora); the torch path processes
    queries in chunks so memory stays ``chunk × N``.
    """
    k = min(k, documents.shape[0])
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(documents.shape[1])
        index.add(documents.float().contiguous().numpy())
        scores, indices = index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()
    all_scores, all_indices = [], []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk].float() @ documents.float().T
        top = scores.topk(k, dim=1)
        all_scores.append(top.values)
        all_indices.append(top.indices)
    return torch.cat(all_scores), torch.cat(all_indices)
