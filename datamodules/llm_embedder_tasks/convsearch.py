"""Conversational search in the QReCC format (Anantha et al., 2021; CC BY-SA 3.0).

A QReCC turn is ``{"Conversation_no", "Turn_no", "Context": [q1, a1, q2, a2, ...], "Question", "Rewrite",
"Answer"}``. The query the embedder sees is the conversation so far plus the question (the reference's
"concat" data). Local files may add ``"candidates": [{"doc_id", "text", "is_relevant"}]`` (passages); the hub
version has no passages, so its keys are the turns' answers (the turn's own answer is the positive, other
turns' answers the negatives): a stand-in, since the reference's keys are passages, which come with its own
files (:mod:`.reference_files`). The task is contrastive only in the reference settings.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError
from datamodules.hub import HubTable, iter_rows
from datamodules.jsonl import read_jsonl, require_field
from datamodules.llm_embedder_tasks.task_example import TaskExample

HUB_NAME = "svakulenk0/qrecc"


def conversation_query(context: list[str], question: str, max_turns: int = 6) -> str:
    """The last ``max_turns`` context utterances and the question, one per line."""
    return "\n".join([*context[-max_turns:], question])


def convsearch_from_file(path: str | Path, max_turns: int = 6) -> list[TaskExample]:
    """QReCC-format JSON lines with passage candidates (see the module docstring)."""
    examples = []
    for line, row in read_jsonl(path):
        context = require_field(row, "Context", list, path, line)
        question = require_field(row, "Question", str, path, line)
        answer = require_field(row, "Answer", str, path, line)
        candidates = require_field(row, "candidates", list, path, line)
        texts, ids, labels = [], [], []
        for index, cand in enumerate(candidates):
            for key, kind in (("doc_id", str), ("text", str), ("is_relevant", bool)):
                if not isinstance(cand, dict) or not isinstance(cand.get(key), kind):
                    raise DataFormatError(
                        path, f"missing or not {kind.__name__}", line, f"candidates[{index}].{key}"
                    )
            texts.append(cand["text"])
            ids.append(cand["doc_id"])
            labels.append(cand["is_relevant"])
        if not any(labels):
            raise DataFormatError(path, "no relevant candidate", line, "candidates")
        query_id = f"{row.get('Conversation_no', line)}-{row.get('Turn_no', 0)}"
        examples.append(
            TaskExample(
                task="convsearch",
                query_id=query_id,
                query=conversation_query(context, question, max_turns),
                answers=(answer,) if answer else (),
                candidates=tuple(texts),
                candidate_ids=tuple(ids),
                labels=tuple(labels),
            )
        )
    return examples


def convsearch_from_rows(
    rows: list[dict[str, Any]], num_candidates: int = 8, max_turns: int = 6, seed: int = 0
) -> list[TaskExample]:
    """QReCC turns without passages (the hub version): answers are the keys."""
    answers = {f"{r['Conversation_no']}-{r['Turn_no']}": r["Answer"] for r in rows if r.get("Answer")}
    pool = sorted(answers)
    examples = []
    for row in rows:
        query_id = f"{row['Conversation_no']}-{row['Turn_no']}"
        if query_id not in answers:
            continue
        rng = random.Random(f"{seed}-{query_id}")
        negatives = rng.sample([k for k in pool if k != query_id], min(num_candidates - 1, len(pool) - 1))
        ids = [query_id, *negatives]
        examples.append(
            TaskExample(
                task="convsearch",
                query_id=query_id,
                query=conversation_query(list(row["Context"]), row["Question"], max_turns),
                answers=(answers[query_id],),
                candidates=tuple(answers[k] for k in ids),
                candidate_ids=tuple(ids),
                labels=(True,) + (False,) * len(negatives),
            )
        )
    return examples


def convsearch_from_hub(
    split: str = "train", num_candidates: int = 8, max_turns: int = 6, max_rows: int | None = None
) -> list[TaskExample]:
    """QReCC from the hub (``svakulenk0/qrecc``, json files: ``qrecc-training.json`` / ``qrecc-test.json``)
    with ``datasets``; the first ``max_rows`` turns. Its keys are answers (the hub copy has no passages): a
    stand-in for the reference's passage keys, which come with the reference files (source ``reference``)."""
    return convsearch_from_rows(
        list(iter_rows(HubTable(HUB_NAME, split=split), limit=max_rows)), num_candidates, max_turns
    )
