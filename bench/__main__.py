"""Run the benchmarks and write ``bench/results/<part>.json`` and ``bench/results/summary.md``.

``python -m bench`` (``make bench``) runs every part; ``--only encode,dream`` a subset; ``--quick`` shrinks
every size for a smoke run whose numbers are not reference ones (it writes to /tmp/lsr-bench-quick unless
``--out`` says otherwise). Each part writes its JSON as soon as it finishes (a failing part is reported and
the others still run), and the summary is rebuilt from whatever part files are present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.machine import machine_info
from bench.report import write_summary

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("ceiling", "encode", "dream", "signal_cache", "frozen_memory", "train_step", "bm25_mining")

# sizes of the reference run (estimated ~15 minutes on an idle 2-core machine) and of --quick
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "ceiling_repeats": 7,
        "step_repeats": 3,
        "step_sizes": ("tiny", "small", "small_bf16"),
        "encode_docs": 256,
        "encode_repeats": 3,
        "smollm_texts": 64,
        "smollm_repeats": 3,
        "teacher_items": 16,
        "generation_queries": 8,
        "generation_tokens": 32,
        "dream_queries": 2,
        "dream_candidates": 5,
        "dream_doc_tokens": 64,
        "dream_repeats": 3,
        "bm25_docs": (200_000, 1_000_000),
        "bm25_queries": 2_000,
    },
    "quick": {
        "ceiling_repeats": 3,
        "step_repeats": 2,
        "step_sizes": ("tiny",),
        "encode_docs": 64,
        "encode_repeats": 1,
        "smollm_texts": 8,
        "smollm_repeats": 1,
        "teacher_items": 4,
        "generation_queries": 2,
        "generation_tokens": 8,
        "dream_queries": 1,
        "dream_candidates": 3,
        "dream_doc_tokens": 16,
        "dream_repeats": 1,
        "bm25_docs": (20_000,),
        "bm25_queries": 500,
    },
}


def save(out: Path, part: str, result: dict[str, Any], seconds: float, sizes: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "part": part,
        "sizes": sizes,
        "wall_seconds": round(seconds, 1),
        "machine": machine_info(),
        "result": result,
    }
    (out / f"{part}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")


def ceilings_from(out: Path) -> dict[str, float]:
    path = out / "ceiling.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run the 'ceiling' part first (python -m bench --only ceiling)"
        )
    result = json.loads(path.read_text())["result"]
    return {"fp32": result["fp32"]["flops_per_s"], "bf16": result["bf16"]["flops_per_s"]}


def run_train_steps(out: Path, sizes: dict[str, Any], methods: list[str] | None = None) -> dict[str, Any]:
    """Each (method, size) in its own process, so each peak memory is its own."""
    from bench.train_step import ADAPTERS

    ceilings = ceilings_from(out)
    runs, missing, failed = [], [], {}
    unknown = sorted(set(methods or []) - set(ADAPTERS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; adapters: {', '.join(ADAPTERS)}")
    for method, adapter in ADAPTERS.items():
        if methods and method not in methods:
            continue
        if not adapter.available():
            missing.append({"method": method, "experiment": adapter.experiment, "package": adapter.package})
            continue
        for size in [s for s in adapter.sizes if s in sizes["step_sizes"]]:
            target = out / "train_step" / f"{method}_{size}.json"
            command = [
                sys.executable,
                "-m",
                "bench.train_step",
                method,
                size,
                "--repeats",
                str(sizes["step_repeats"]),
                "--ceiling-fp32",
                str(ceilings["fp32"]),
                "--ceiling-bf16",
                str(ceilings["bf16"]),
                "--out",
                str(target),
            ]
            print(f"[bench] train step {method} {size}", flush=True)
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                failed[f"{method}_{size}"] = done.stderr[-2000:]
                print(f"[bench]   failed: {done.stderr[-600:]}", flush=True)
                continue
            runs.append(json.loads(target.read_text()))
    return {"ceilings_flops_per_s": ceilings, "runs": runs, "not_benchmarked": missing, "failed": failed}


def run_part(part: str, out: Path, sizes: dict[str, Any], methods: list[str] | None = None) -> dict[str, Any]:
    if part == "ceiling":
        from bench.ceiling import measure_ceiling

        return measure_ceiling(repeats=sizes["ceiling_repeats"])
    if part == "train_step":
        return run_train_steps(out, sizes, methods)
    if part == "encode":
        from bench.encode import (
            compare_with_sentence_transformers,
            corpus_texts,
            smollm_forward_precisions,
            smollm_precisions,
        )

        texts, source = corpus_texts(None, sizes["encode_docs"])
        minilm = compare_with_sentence_transformers(
            texts, max_length=256, batch_size=32, repeats=sizes["encode_repeats"]
        )
        hotpot, _ = corpus_texts(
            Path(__file__).resolve().parents[1] / "datamodules" / "data" / "hotpotqa", sizes["smollm_texts"]
        )
        smollm = smollm_precisions(hotpot, max_length=128, batch_size=32, repeats=sizes["smollm_repeats"])
        forward = smollm_forward_precisions(batch=16, length=128, repeats=sizes["smollm_repeats"])
        return {
            "corpus": source,
            "minilm_vs_sentence_transformers": minilm,
            "smollm_precisions": smollm,
            "smollm_forward": forward,
        }
    if part == "signal_cache":
        from bench.signal_cache import measure_signal_caches

        return measure_signal_caches(
            sizes["teacher_items"], sizes["generation_queries"], sizes["generation_tokens"]
        )
    if part == "frozen_memory":
        from bench.frozen_memory import measure_in_subprocesses

        return measure_in_subprocesses(batch=4, length=128)
    if part == "dream":
        from bench.dream_injection import compare

        return compare(
            sizes["dream_queries"],
            sizes["dream_candidates"],
            sizes["dream_doc_tokens"],
            sizes["dream_repeats"],
        )
    if part == "bm25_mining":
        from bench.bm25_mining import run

        return run(list(sizes["bm25_docs"]), sizes["bm25_queries"])
    raise ValueError(f"unknown part '{part}' (choose from: {', '.join(PARTS)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke run (not reference numbers)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default bench/results; --quick defaults to /tmp/lsr-bench-quick)",
    )
    parser.add_argument("--methods", default="", help="train_step: comma-separated adapters (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every part (default 2)")
    args = parser.parse_args(argv)
    out = args.out or (Path("/tmp/lsr-bench-quick") if args.quick else RESULTS)
    sizes = SIZES["quick" if args.quick else "full"]
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from: {', '.join(PARTS)}")
    os.environ["LSR_BENCH_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    failed = []
    for part in parts:
        print(f"[bench] {part} ...", flush=True)
        start = time.perf_counter()
        try:
            result = run_part(part, out, sizes, [m for m in args.methods.split(",") if m])
        except Exception:  # one broken part must not lose the others' results
            traceback.print_exc()
            failed.append(part)
            print(f"[bench] {part} FAILED after {time.perf_counter() - start:.0f} s", flush=True)
            continue
        save(out, part, result, time.perf_counter() - start, "quick" if args.quick else "full")
        print(f"[bench] {part} done in {time.perf_counter() - start:.0f} s", flush=True)
    summary = write_summary(out)
    print(f"[bench] summary: {summary}")
    if failed:
        sys.exit(f"[bench] failed parts: {', '.join(failed)} (tracebacks above)")


if __name__ == "__main__":
    main()
