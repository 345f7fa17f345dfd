"""The cache of untrained (step-0) retrieval scores: one checksummed JSON file per key.

One file per (module, data, split, queries, corpus, top-k) key, written atomically with a SHA-256 header
(``retrieval.cache.write_checked_json``): concurrent runs never overwrite each other's
entries, a kill mid-write leaves the previous file, and a damaged or incomplete entry (bad checksum, a
missing or non-finite metric) is discarded and recomputed rather than reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from retrieval.cache import cache_root, discard_damaged, read_checked_json, write_checked_json
from retrieval.metrics import DEFAULT_CUTOFFS

EXPECTED_METRICS = tuple(f"{name}@{k}" for name, cutoffs in DEFAULT_CUTOFFS.items() for k in cutoffs)


def untrained_score_path(key: str) -> Path:
    return cache_root() / "untrained_scores" / f"{key}.json"


def metrics_problem(metrics: Any) -> str | None:
    """Why ``metrics`` is not a complete record of finite scores, or None."""
    if not isinstance(metrics, dict):
        return f"metrics is {type(metrics).__name__}, not an object"
    missing = [m for m in EXPECTED_METRICS if m not in metrics]
    if missing:
        return f"missing metrics {missing}"
    bad = [
        k
        for k, v in metrics.items()
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)
    ]
    return f"non-numeric or non-finite metrics {bad}" if bad else None


def read_untrained_score(key: str) -> dict[str, float] | None:
    """The cached metrics for ``key``; None when absent or damaged (a damaged entry is deleted)."""
    path = untrained_score_path(key)
    entry = read_checked_json(path)
    if entry is None:
        return None
    problem = metrics_problem(entry.get("metrics") if isinstance(entry, dict) else None)
    if problem:
        discard_damaged(path, problem)
        return None
    return dict(entry["metrics"])


def write_untrained_score(
    key: str, metrics: dict[str, float], description: dict[str, Any] | None = None
) -> Path:
    path = untrained_score_path(key)
    write_checked_json(path, {"metrics": metrics, "model": description})
    return path
