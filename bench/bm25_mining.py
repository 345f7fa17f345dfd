"""BM25 candidate mining at scale (datamodules/mining.py): index build, cache reload and batched retrieval
on a synthetic corpus of short passages, with the process's peak memory after each phase.

Run alone: ``python -m bench.bm25_mining --docs 1000000 --queries 10000``; in the suite:
``python -m bench --only bm25_mining``. Each measurement runs in a fresh subprocess (its own peak RSS)
with a private cache folder, removed afterwards.

The corpus is synthetic on purpose (no download): words drawn from a Zipf(1.1) distribution over a
50,000-word vocabulary, 12-40 words per passage (MS MARCO passages average ~56 words; these are shorter,
so scale index time by ~1.5x per passage for MS MARCO). Queries are 3-8 words drawn the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_texts(
    count: int, min_words: int, max_words: int, seed: int, vocabulary: int = 50_000
) -> list[str]:
    """``count`` texts of Zipf-distributed words ``w<rank>`` (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocabulary)])
    lengths = rng.integers(min_words, max_words + 1, size=count)
    ranks = rng.zipf(1.1, size=int(lengths.sum())) % vocabulary
    flat = words[ranks]
    ends = np.cumsum(lengths)
    return [" ".join(flat[end - length : end]) for end, length in zip(ends, lengths)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(
    docs: int, queries: int, k: int, batch_size: int | None, baseline_queries: int = 200
) -> dict[str, Any]:
    """Build, cache, reload and query one index (in this process); times in seconds, memory in MB."""
    from datamodules.mining import BM25Index, corpus_fingerprint, index_key

    cache = Path(tempfile.mkdtemp(prefix="lsr-bench-bm25-"))
    try:
        start = time.perf_counter()
        texts = synthetic_texts(docs, 12, 40, seed=0)
        query_texts = synthetic_texts(queries, 3, 8, seed=1)
        result: dict[str, Any] = {
            "generate_s": time.perf_counter() - start,
            "rss_after_corpus_mb": peak_rss_mb(),
        }
        start = time.perf_counter()
        fingerprint = corpus_fingerprint(texts)
        result["fingerprint_s"] = time.perf_counter() - start
        start = time.perf_counter()
        BM25Index.cached(texts, cache_dir=cache)  # cold: tokenize, index, save atomically
        result["build_and_save_s"] = time.perf_counter() - start
        result["peak_rss_after_build_mb"] = peak_rss_mb()
        folder = cache / index_key(fingerprint)
        result["index_on_disk_mb"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        start = time.perf_counter()
        index = BM25Index.cached(texts, cache_dir=cache)  # warm: fingerprint + memory-mapped load
        result["warm_load_s"] = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        top = index.top_k(query_texts, k, batch_size=batch_size)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        result |= {
            "retrieve_s": seconds,
            "retrieve_cpu_s": cpu_seconds,
            "queries_per_s": queries / seconds,
            "queries_per_cpu_s": queries / cpu_seconds,
            "result_shape": list(top.shape),
        }
        result["peak_rss_final_mb"] = peak_rss_mb()
        return {"docs": docs, "queries": queries, "k": k, "batch_size": batch_size, **result}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure_in_subprocess(docs: int, queries: int, k: int = 100, batch_size: int = 4096) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, so the peak memory is this measurement's alone."""
    command = [sys.executable, "-m", "bench.bm25_mining", "--docs", str(docs), "--queries", str(queries)]
    command += ["--k", str(k), "--batch-size", str(batch_size), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"bm25 bench failed for {docs} documents:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: list[int], queries: int, k: int = 100) -> dict[str, Any]:
    """One measurement per corpus size; per-passage costs from the largest."""
    runs = [measure_in_subprocess(size, queries, k) for size in sizes]
    largest = runs[-1]
    return {
        "corpus": "synthetic Zipf(1.1) words, 12-40 per passage (datamodules/mining.py defaults)",
        "runs": runs,
        "per_million_passages": {
            "build_and_save_s": largest["build_and_save_s"] * 1e6 / largest["docs"],
            "peak_rss_mb": largest["peak_rss_after_build_mb"] * 1e6 / largest["docs"],
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: as many as fit a 512 MB score block"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line (used by the suite)")
    args = parser.parse_args(argv)
    result = measure(args.docs, args.queries, args.k, args.batch_size)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The section of ``bench/results/summary.md``."""
    lines = [
        "## BM25 candidate mining (bm25s, cached index; datamodules/mining.py)",
        "",
        f"Corpus: {result['corpus']}. Queries: 3-8 words, top {result['runs'][0]['k']}, own process per size.",
        "",
        "| passages | build + save s | index on disk MB | warm load s | queries | retrieve s (wall) "
        "| retrieve CPU s | queries/CPU-s | peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['docs']:,} | {run['build_and_save_s']:.1f} | {run['index_on_disk_mb']:.0f} | "
            f"{run['warm_load_s']:.2f} | {run['queries']:,} | {run['retrieve_s']:.1f} | {run['retrieve_cpu_s']:.1f} | "
            f"{run['queries_per_cpu_s']:.0f} | {run['peak_rss_final_mb']:.0f} |"
        )
    per_million = result["per_million_passages"]
    lines += [
        "",
        f"Per million passages (largest run): {per_million['build_and_save_s']:.0f} s to build and save, "
        f"{per_million['peak_rss_mb']:.0f} MB peak RSS (corpus texts included).",
        "",
    ]
    return lines
