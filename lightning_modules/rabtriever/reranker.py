"""The teacher on its own: a generative reranker (document first, relevance from answer-token log-probs).

``rerank`` orders one query's candidates; ``rerank_top_k`` rescores a first stage's top-k for many
queries with any pair scorer (teacher or student), so the two can be compared on the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lightning_modules.rabtriever.passes import RelevanceLM

PairScorer = Callable[[list[str], list[str]], torch.Tensor]


def rerank(
    lm: RelevanceLM,
    query: str,
    documents: Sequence[str],
    top_k: int | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, indices)`` of ``documents`` for ``query``, best first, by the teacher's relevance log-odds.

    Example::

        lm = RelevanceLM(frozen.model, frozen.tokenizer, RelevancePrompt())
        scores, order = rerank(lm, "who wrote Hamlet?", ["Hamlet is a play by Shakespeare.", "Paris is in France."])
    """
    if not documents:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    scores = lm.teacher_scores([query] * len(documents), list(documents), batch_size, precision)
    order = scores.argsort(descending=True, stable=True)[: top_k or len(documents)]
    return scores[order], order


def teacher_pair_scorer(lm: RelevanceLM, batch_size: int = 16, precision: str = "fp32") -> PairScorer:
    """A :data:`PairScorer` running the teacher on aligned (query, document) lists."""
    return lambda queries, documents: lm.teacher_scores(queries, documents, batch_size, precision)


def rerank_top_k(
    score_pairs: PairScorer, query_texts: Sequence[str], document_texts: Sequence[str], indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescore each query's first-stage candidates ``indices`` ``[Q, k]`` (into ``document_texts``).

    Returns ``(scores, indices)`` ``[Q, k]`` re-sorted by the new scores (all pairs scored in one call,
    so the scorer can batch them by length).
    """
    if indices.shape[0] != len(query_texts):
        raise ValueError(f"{indices.shape[0]} candidate rows for {len(query_texts)} queries")
    k = indices.shape[1]
    flat = indices.reshape(-1).tolist()
    queries = [q for q in query_texts for _ in range(k)]
    scores = score_pairs(queries, [document_texts[i] for i in flat]).reshape(len(query_texts), k).float()
    order = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, order), indices.gather(1, order)
