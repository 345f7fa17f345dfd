"""LLM-Embedder task setup on 100k synthetic chat turns, and the teacher lookup a training step does.

- **Chat setup**: every turn's keys are all earlier exchanges of its dialogue. ``before`` rebuilds them as a
  copied tuple per turn (the previous ``chat_examples``, kept here as the baseline): O(N²) time and memory
  in a dialogue's length. ``after`` is :func:`datamodules.llm_embedder_tasks.chat.chat_examples` (shared
  history slices, O(N)). Both build the examples and the training dataset (``TaskGroupDataset``) from the
  same 100k turns, cut into dialogues of several lengths; their keys are checked equal.
- **Step lookup**: ``TeacherScorer.lookup`` of one batch whose scores are cached (what every training step
  does), with the tiny random LM's tokenizer: the first call tokenises, later calls reuse the item keys.

``python -m bench.llm_embedder_task_setup [--turns 100000] [--out bench/results/llm_embedder_task_setup.json]``
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from datamodules.llm_embedder_tasks.chat import chat_examples
from datamodules.llm_embedder_tasks.datamodule import TaskGroupDataset
from datamodules.llm_embedder_tasks.task_example import TaskExample

RESULTS = Path(__file__).resolve().parent / "results" / "llm_embedder_task_setup.json"
SESSIONS = 5
DIALOGUE_LENGTHS = (50, 100, 250)  # exchanges per dialogue


def copied_history_examples(
    dialogue_id: str, sessions: list[list[str]], min_history: int
) -> list[TaskExample]:
    """The baseline: each turn's keys copied into new tuples (what ``chat_examples`` did before), i.e.
    today's examples with their shared history slices materialised per turn."""
    return [
        replace(e, candidates=tuple(e.candidates), candidate_ids=tuple(e.candidate_ids))
        for e in chat_examples(dialogue_id, sessions, min_history)
    ]


def synthetic_dialogues(turns: int, exchanges_per_dialogue: int) -> list[list[list[str]]]:
    per_session = exchanges_per_dialogue // SESSIONS
    count = turns // (per_session * SESSIONS)
    return [
        [[f"dialogue {d} session {s} utterance {i}" for i in range(2 * per_session)] for s in range(SESSIONS)]
        for d in range(count)
    ]


def timed_setup(build: Callable[..., list[TaskExample]], dialogues: list[list[list[str]]]) -> dict[str, Any]:
    """Seconds of building the examples and the training dataset, then its peak memory (a traced rerun)."""

    def setup() -> list[TaskExample]:
        examples = [e for d, sessions in enumerate(dialogues) for e in build(str(d), sessions, 8)]
        TaskGroupDataset({"chat": examples}, {"chat": 8}, seed=0)
        return examples

    gc.collect()
    gc.disable()  # as timeit does: a collection pass would charge one side for the other's objects
    try:
        start = time.perf_counter()
        examples = setup()
        seconds = time.perf_counter() - start
    finally:
        gc.enable()
    digest = hashlib.sha1(repr([(tuple(e.candidates), tuple(e.candidate_ids)) for e in examples]).encode())
    result = {
        "seconds": round(seconds, 3),
        "examples": len(examples),
        "keys": sum(len(e.candidates) for e in examples),
        "keys_sha1": digest.hexdigest(),
    }
    del examples
    gc.collect()
    tracemalloc.start()
    setup()
    result["peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    tracemalloc.stop()
    return result


def chat_setup(turns: int) -> list[dict[str, Any]]:
    rows = []
    for length in DIALOGUE_LENGTHS:
        dialogues = synthetic_dialogues(turns, length)
        before = timed_setup(lambda i, s, m: copied_history_examples(i, s, m), dialogues)
        after = timed_setup(lambda i, s, m: chat_examples(i, s, min_history=m), dialogues)
        if before["keys_sha1"] != after["keys_sha1"]:
            raise AssertionError("the shared-history keys differ from the copied ones")
        rows.append({"exchanges_per_dialogue": length, "turns": turns, "before": before, "after": after})
    return rows


def step_lookup(batches: int = 20, batch_items: int = 8 * 100) -> dict[str, Any]:
    """Seconds per lookup of a cached batch of ``batch_items`` (queries × group), first and repeated."""
    import tempfile

    from lightning_modules.llm_embedder.score_cache import item_key
    from lightning_modules.llm_embedder.teacher import ScoringItem, TeacherScorer
    from lightning_modules.llm_embedder.templates import QA_TEMPLATE
    from lightning_modules.models.frozen_lm import FrozenCausalLM

    lm = FrozenCausalLM("tiny-llama")
    items = [
        ScoringItem(
            f"paragraph {i} " + "about the river and the song " * 20, f"question {i // 100}?", "an answer"
        )
        for i in range(batch_items)
    ]
    folder = tempfile.mkdtemp(prefix="lsr-bench-lookup-")
    scorer = TeacherScorer(lm, reward="nll", cache_dir=folder, show_progress=False)
    scorer.cache(QA_TEMPLATE).add(
        dict.fromkeys(scorer.keys(QA_TEMPLATE, items), -1.0)
    )  # as prescoring leaves it
    fresh = TeacherScorer(lm, reward="nll", cache_dir=folder, show_progress=False)
    start = time.perf_counter()
    per_item = [item_key(*fresh.prompt(QA_TEMPLATE, item)) for item in items]  # the previous per-step path
    before = time.perf_counter() - start
    start = time.perf_counter()
    fresh.lookup(QA_TEMPLATE, items)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        fresh.lookup(QA_TEMPLATE, items)
    if per_item != fresh.keys(QA_TEMPLATE, items):
        raise AssertionError("batched truncation gives other keys than per-item truncation")
    return {
        "items_per_batch": batch_items,
        "before_per_step_s": round(before, 4),  # every step tokenised and decoded each item on its own
        "after_first_step_s": round(first, 4),  # one batched tokenisation of the items not seen before
        "after_later_steps_s": round((time.perf_counter() - start) / batches, 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from bench.machine import machine_info

    result = {"chat_setup": chat_setup(args.turns), "step_lookup": step_lookup(), "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
