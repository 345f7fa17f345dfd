"""Cost of the downstream (RAG) evaluation in the lab setting (``make bench-rag``).

SmolLM2-135M-Instruct reads the first ``--questions`` HotpotQA dev questions with ``--k`` documents each
(BM25's top-k stands in for the retriever: the cost depends on the prompt lengths, not on which documents
they are), ``--threads`` torch threads (the lab: 1). Each variant runs once, timed with its CPU share
(below 1 when other processes took the cores):

- ``bf16``: weights in bf16, one prefill per batch for NLL and generation (the default ``callbacks=rag``);
- ``bf16_two_prefills``: the same, but ``generate`` encodes the prompts again (no cache reuse);
- ``fp32``: fp32 weights; ``fp32_autocast``: fp32 weights under bf16 autocast;
- ``references_bf16``: the three reference rows (no retrieval, BM25, oracle), computed once per LM/data.

Each variant's mean answer NLL / EM / F1 shows what the precision does to the numbers. Results go to
``bench/results/rag_cost.json``; ``--tiny`` runs the tiny random LM on the fixture (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from callbacks.rag_reader import PromptBuilder, ReaderPrompt, read
from callbacks.rag_rows import RagQuestion, RowReader, reference_documents, row_metrics
from datamodules.retrieval import RetrievalDataModule
from lightning_modules.models.frozen_lm import FrozenCausalLM

RESULTS = Path(__file__).resolve().parent / "results" / "rag_cost.json"
VARIANTS = ("bf16", "bf16_two_prefills", "fp32", "fp32_autocast", "references_bf16")


def lab_questions(tiny: bool, count: int) -> tuple[list[RagQuestion], dict]:
    from callbacks.rag_rows import rag_questions

    data = RetrievalDataModule(path="hotpotqa", tiny=tiny)
    return rag_questions(data, count), data.load_corpus().corpus


def timed(fn) -> tuple[Any, dict[str, float]]:
    """``fn()`` and its wall seconds, CPU seconds (what an idle machine would take at these threads) and
    CPU share (CPU seconds / (wall × threads): near 1 idle, lower when other processes took the cores)."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    share = cpu_seconds / (seconds * torch.get_num_threads()) if seconds > 0 else None
    return value, {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "cpu_share": round(share, 3) if share else None,
    }


def measure_variant(
    name: str, lm_name: str, questions: list[RagQuestion], corpus: dict, k: int, batch_size: int
) -> dict[str, Any]:
    dtype = "float32" if name.startswith("fp32") else "bfloat16"
    lm = FrozenCausalLM(lm_name, dtype=dtype)
    builder = PromptBuilder(lm.tokenizer, ReaderPrompt())
    precision = "bf16" if name == "fp32_autocast" else "fp32"
    reader = RowReader(lm, builder, batch_size, 16, precision)
    retrieved = reference_documents("bm25", questions, corpus, k)
    if name == "references_bf16":
        rows, timing = timed(
            lambda: {
                kind: row_metrics(reader.score(questions, reference_documents(kind, questions, corpus, k)))
                for kind in ("none", "bm25", "oracle")
            }
        )
        return {"dtype": dtype, "precision": precision, **timing, "metrics": rows}
    if name == "bf16_two_prefills":
        prompts = [builder.prompt_ids(builder.text(q.text, d)) for q, d in zip(questions, retrieved)]
        answers = [builder.answer_ids(q.answers[0]) for q in questions]
        results, timing = timed(
            lambda: read(
                lm.model, lm.tokenizer, prompts, answers, batch_size, 16, precision, reuse_cache=False
            )
        )
        nll = sum(r[0] for r in results) / len(results)
        return {"dtype": dtype, "precision": precision, **timing, "metrics": {"answer_nll": nll}}
    records, timing = timed(lambda: reader.score(questions, retrieved))
    prompt_tokens = [len(builder.prompt_ids(builder.text(q.text, d))) for q, d in zip(questions, retrieved)]
    _, memo = timed(lambda: reader.score(questions, retrieved))  # unchanged documents: memo hits only
    return {
        "dtype": dtype,
        "precision": precision,
        **timing,
        "seconds_per_question": round(timing["seconds"] / len(questions), 3),
        "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "unchanged_documents_seconds": memo["seconds"],
        "metrics": row_metrics(records),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random LM on the fixture (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    lm_name = "tiny-llama" if args.tiny else "smollm2-135m-instruct"
    questions, corpus = lab_questions(args.tiny, args.questions)
    result: dict[str, Any] = {
        "lm": lm_name,
        "questions": len(questions),
        "k": args.k,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "variants": {},
    }
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            parser.error(f"unknown variant '{name}' (choose from: {', '.join(VARIANTS)})")
        print(f"[bench-rag] {name} ...", flush=True)
        result["variants"][name] = measure_variant(name, lm_name, questions, corpus, args.k, args.batch_size)
        print(f"[bench-rag] {name}: {json.dumps(result['variants'][name])}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
