"""Per-query cost of Rabtriever's student against its teacher (``make bench-rabtriever``).

Two sweeps, each timed as the best of ``--repeats`` runs (the minimum is the least disturbed by other
processes on a shared machine):

1. N stored documents (documents of ``--length`` tokens): the teacher scores a query with N full passes
   over ``[doc; query; prompt]``; the student with one query pass plus N predictor calls on stored ``Z_d``.
2. Document length L (64 … 1024 tokens, ``--docs`` documents): teacher N passes of length ≈ L + query;
   student query cost (independent of L by construction); and the one-off cost of storing ``Z_d``.

Growth exponents are least-squares slopes of log(seconds) against log(N) or log(L). Results go to
``bench/results/rabtriever_cost.json``. ``--tiny`` runs the tiny random LM with small sizes (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lightning_modules.rabtriever.module import RabtrieverModule
from lightning_modules.rabtriever.passes import RelevanceLM, autocast_for

RESULTS = Path(__file__).resolve().parent / "results" / "rabtriever_cost.json"


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of ``log(seconds)`` against ``log(size)`` (1: linear, 2: quadratic, 0: flat)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def filler_documents(count: int, words: int) -> list[str]:
    """``count`` distinct documents of about ``words`` words (truncated to exact token budgets by the prompt)."""
    vocabulary = (
        "the river flows through the city where the university was founded by a famous director "
        "who was born in paris and released an album in the united states"
    ).split()
    return [
        " ".join(vocabulary[(i * 7 + j) % len(vocabulary)] for j in range(words)) + f" {i}"
        for i in range(count)
    ]


def build_module(model: str, length: int, predictor: str, precision: str) -> RabtrieverModule:
    module = RabtrieverModule(
        frozen_lm={"name_or_path": model},
        predictor={"kind": predictor},
        prompt={"max_document_tokens": length, "relevance_tokens": ["A", "B"]},
        lm_precision=precision,
        cache_document_states=False,
    )
    return module.eval()


@torch.no_grad()
def time_teacher(module: RabtrieverModule, query: str, documents: list[str], repeats: int) -> float:
    return best_seconds(
        lambda: module.lm.teacher_scores(
            [query] * len(documents), documents, module.lm_batch_size, module.lm_precision
        ),
        repeats,
    )


@torch.no_grad()
def time_student(module: RabtrieverModule, query: str, stored: torch.Tensor, repeats: int) -> float:
    def score() -> torch.Tensor:
        with autocast_for(module.lm_precision, module.device):
            query_state = module.lm.query_states([query])
        return module.score_stored(query_state, stored, top_k=min(10, stored.shape[0]))

    return best_seconds(score, repeats)


@torch.no_grad()
def time_document_states(module: RabtrieverModule, documents: list[str], repeats: int) -> float:
    def store() -> torch.Tensor:
        with autocast_for(module.lm_precision, module.device):
            return module.lm.document_states(documents)

    return best_seconds(store, repeats)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--predictor", default="mlp", choices=["mlp", "cross_attention"])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--teacher-n", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--student-n", type=int, nargs="+", default=[4, 8, 16, 32, 256, 1024, 4096])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--length", type=int, default=128, help="document tokens in the N sweep")
    parser.add_argument("--docs", type=int, default=4, help="documents per query in the length sweep")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny random LM, small sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.teacher_n, args.student_n, args.lengths, args.repeats = (
            "tiny-llama",
            [2, 4, 8],
            [2, 8, 32],
            [16, 32, 64],
            1,
        )
    return args


def sweep_stored_documents(module: RabtrieverModule, query: str, args: argparse.Namespace) -> dict:
    """Teacher and student seconds per query against the number of documents N."""
    pool = filler_documents(max(args.teacher_n), words=2 * max(args.length, 8))
    # the student's cost does not depend on what the stored states hold: 32 real ones, tiled to the largest N
    with torch.no_grad(), autocast_for(module.lm_precision, module.device):
        distinct = module.lm.document_states(filler_documents(32, words=2 * max(args.length, 8))).float()
    stored_pool = distinct.repeat(-(-max(args.student_n) // distinct.shape[0]), 1, 1)
    return {
        "document_tokens": args.length,
        "teacher": {n: time_teacher(module, query, pool[:n], args.repeats) for n in args.teacher_n},
        "student": {n: time_student(module, query, stored_pool[:n], args.repeats) for n in args.student_n},
    }


def sweep_document_length(module: RabtrieverModule, query: str, args: argparse.Namespace) -> dict:
    """Teacher, student and document-state seconds against the document length."""
    by_length: dict = {"documents": args.docs, "teacher": {}, "student_query": {}, "document_states": {}}
    for length in args.lengths:
        module.lm = RelevanceLM(
            module.frozen_lm.model,
            module.frozen_lm.tokenizer,
            replace(module.lm.prompt, max_document_tokens=length),
        )
        documents = filler_documents(args.docs, words=2 * length)
        with torch.no_grad():
            stored = module.lm.document_states(documents).float()
        by_length["teacher"][length] = time_teacher(module, query, documents, args.repeats)
        by_length["student_query"][length] = time_student(module, query, stored, args.repeats)
        by_length["document_states"][length] = time_document_states(module, documents, args.repeats)
    return by_length


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    query = "Which city does the river flow through, and who founded its university?"
    module = build_module(args.model, args.length, args.predictor, args.precision)
    by_n = sweep_stored_documents(module, query, args)
    by_length = sweep_document_length(module, query, args)

    def exponent(table: dict) -> float:
        sizes = sorted(table)
        return round(growth_exponent(sizes, [table[s] for s in sizes]), 3)

    results = {
        "model": args.model,
        "predictor": args.predictor,
        "precision": args.precision,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "per_query_seconds_vs_stored_documents": by_n,
        "per_query_seconds_vs_document_length": by_length,
        "exponents": {
            "teacher_vs_n": exponent(by_n["teacher"]),
            "student_vs_n": exponent(by_n["student"]),
            "teacher_vs_length": exponent(by_length["teacher"]),
            "student_query_vs_length": exponent(by_length["student_query"]),
            "document_states_vs_length": exponent(by_length["document_states"]),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["exponents"], indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
