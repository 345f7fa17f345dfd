"""Retrieval metrics with trec_eval semantics (what pytrec_eval computes), from a run and qrels.

- Ranking: score descending, ties broken by document id descending (trec_eval's order).
- nDCG@k: linear gain = relevance grade; ideal DCG from all judged relevant documents (Järvelin &
  Kekäläinen, 2002; trec_eval ``ndcg_cut``).
- Recall@k: relevant retrieved in the top k / all relevant (``recall``).
- MRR@k: 1 / rank of the first relevant document within the top k, else 0 (``recip_rank`` on a run cut at k).
- Averages are over the queries that have at least one relevant document in the qrels.
"""

from __future__ import annotations

import math

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def ranked(doc_scores: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(doc_scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def query_metrics(
    ranking: list[str], relevance: dict[str, int], cutoffs: dict[str, tuple[int, ...]]
) -> dict[str, float]:
    relevant = {d: r for d, r in relevance.items() if r > 0}
    out: dict[str, float] = {}
    for k in cutoffs.get("ndcg", ()):
        dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
        ideal = sorted(relevant.values(), reverse=True)[:k]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
    for k in cutoffs.get("recall", ()):
        out[f"recall@{k}"] = sum(1 for d in ranking[:k] if d in relevant) / len(relevant) if relevant else 0.0
    for k in cutoffs.get("mrr", ()):
        out[f"mrr@{k}"] = next((1.0 / (i + 1) for i, d in enumerate(ranking[:k]) if d in relevant), 0.0)
    return out


DEFAULT_CUTOFFS = {"ndcg": (10,), "recall": (10, 100), "mrr": (10,)}


def evaluate_run(
    run: Run, qrels: Qrels, cutoffs: dict[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics. Queries judged but absent from the run score 0."""
    cutoffs = cutoffs or DEFAULT_CUTOFFS
    per_query = {}
    for qid, relevance in qrels.items():
        if not any(r > 0 for r in relevance.values()):
            continue
        per_query[qid] = query_metrics(ranked(run.get(qid, {})), relevance, cutoffs)
    if not per_query:
        raise ValueError("no judged query with a relevant document: cannot compute retrieval metrics")
    names = next(iter(per_query.values())).keys()
    means = {name: sum(m[name] for m in per_query.values()) / len(per_query) for name in names}
    return means, per_query
