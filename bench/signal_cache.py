"""Cost of the LLM signal, first run vs cached run, through the methods' own disk caches.

- LLM-Embedder: ``TeacherScorer.score`` of (paragraph, question, answer) triples from the vendored
  HotpotQA under the qa template (NLL reward), into an empty cache folder, then again with a fresh scorer
  on the same folder (every score read back from disk).
- LLM2Vec-Gen: ``generate_responses`` (greedy) for NQ-open queries, first into an empty folder, then
  cached.

Both use the real SmolLM2-135M-Instruct on the benchmark's thread count. The goal: cached ≤ 5% of first.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def first_and_cached(run: Callable[[Path], object]) -> dict[str, float]:
    """Seconds of ``run(cache_dir)`` on an empty folder, then again on the filled one; their ratio."""
    folder = Path(tempfile.mkdtemp(prefix="lsr-bench-signal-"))
    start = time.perf_counter()
    run(folder)
    first = time.perf_counter() - start
    start = time.perf_counter()
    run(folder)
    cached = time.perf_counter() - start
    return {
        "first_s": first,
        "cached_s": cached,
        "cached_over_first": cached / first if first > 0 else float("nan"),
    }


def hotpotqa_items(count: int) -> list[Any]:
    from lightning_modules.llm_embedder.teacher import ScoringItem

    items = []
    for line in (REPO / "datamodules" / "data" / "hotpotqa" / "qa_candidates.jsonl").read_text().splitlines():
        record = json.loads(line)
        for candidate in record["candidates"]:
            items.append(
                ScoringItem(key=candidate["text"], query=record["query"], answer=record["answers"][0])
            )
            if len(items) == count:
                return items
    raise ValueError(f"the vendored HotpotQA has fewer than {count} candidate paragraphs")


def llm_embedder_teacher_scores(lm: Any, items: int) -> dict[str, Any]:
    from lightning_modules.llm_embedder.teacher import TeacherScorer
    from lightning_modules.llm_embedder.templates import QA_TEMPLATE

    triples = hotpotqa_items(items)

    def run(folder: Path) -> None:
        scorer = TeacherScorer(lm, reward="nll", cache_dir=str(folder), show_progress=False)
        scores, report = scorer.score(QA_TEMPLATE, triples)
        if scores is None or len(scores) != len(triples):
            raise RuntimeError(f"teacher scoring returned {None if scores is None else len(scores)} scores")

    return {
        "signal": "LLM-Embedder teacher scores (NLL reward, qa template, HotpotQA paragraphs)",
        "items": items,
        **first_and_cached(run),
    }


def llm2vec_gen_responses(lm: Any, queries: int, max_new_tokens: int) -> dict[str, Any]:
    from lightning_modules.llm2vec_gen.generation import GenerationSettings, generate_responses

    texts = [
        json.loads(line)["text"]
        for line in (REPO / "datamodules" / "data" / "nq_open" / "queries.jsonl")
        .read_text()
        .splitlines()[:queries]
    ]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=8)

    def run(folder: Path) -> None:
        responses, _ = generate_responses(
            lm.model, lm.tokenizer, texts, settings, lm.name_or_path, root=folder, show_progress=False
        )
        if len(responses) != len(texts):
            raise RuntimeError(f"generation returned {len(responses)} responses for {len(texts)} queries")

    return {
        "signal": f"LLM2Vec-Gen greedy responses (NQ-open queries, <= {max_new_tokens} new tokens)",
        "items": queries,
        **first_and_cached(run),
    }


def measure_signal_caches(items: int, queries: int, max_new_tokens: int) -> dict[str, Any]:
    from lightning_modules.models.frozen_lm import FrozenCausalLM

    lm = FrozenCausalLM("smollm2-135m-instruct")
    results: dict[str, Any] = {
        "lm": "SmolLM2-135M-Instruct fp32",
        "goal_cached_over_first": 0.05,
        "signals": {},
    }
    if (REPO / "lightning_modules" / "llm_embedder" / "teacher.py").exists():
        results["signals"]["llm_embedder"] = llm_embedder_teacher_scores(lm, items)
    if (REPO / "lightning_modules" / "llm2vec_gen" / "generation.py").exists():
        results["signals"]["llm2vec_gen"] = llm2vec_gen_responses(lm, queries, max_new_tokens)
    return results
