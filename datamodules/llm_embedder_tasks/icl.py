"""In-context example retrieval, FLAN / UPRISE style: retrieve demonstrations that help the LM answer.

A record is ``{"task": str, "input": str, "output": str}``. Each query is one record's input; its
candidates are other records of the same task (``input\\noutput``), chosen by BM25 over the inputs
(label-free); the teacher scores ``−NLL(output | demonstration, input)`` (template ``{key}\\n{query}\\n{answer}``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError
from datamodules.hub import iter_rows, json_files
from datamodules.jsonl import read_jsonl, require_field
from datamodules.llm_embedder_tasks.task_example import TaskExample
from datamodules.mining import bm25_top_k
from datamodules.records import Document

FLAN_REPO = "Muennighoff/flan"
FLAN_FILES = "train/{task}_10templates_train.jsonl"  # renamed on the hub from train/{task}_10templates.json


def demonstration(record: dict[str, str]) -> str:
    return f"{record['input'].strip()}\n{record['output'].strip()}"


def icl_examples(
    records: list[dict[str, str]], num_candidates: int = 5, max_queries: int | None = None
) -> list[TaskExample]:
    """Queries with their BM25-nearest demonstrations from the same task (never themselves)."""
    by_task: dict[str, list[dict[str, str]]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    examples = []
    for task_name, pool in sorted(by_task.items()):
        if len(pool) <= num_candidates:
            raise DataFormatError(
                task_name,
                f"needs more than {num_candidates} records to draw demonstrations from, has {len(pool)}",
            )
        documents = [Document(doc_id=r["id"], text=r["input"]) for r in pool]
        top = bm25_top_k([r["input"] for r in pool], documents, num_candidates + 1)
        for record, row in zip(pool, top):
            keep = [i for i in row if pool[i]["id"] != record["id"]][:num_candidates]
            examples.append(
                TaskExample(
                    task="icl",
                    query_id=record["id"],
                    query=record["input"],
                    answers=(record["output"],),
                    candidates=tuple(demonstration(pool[i]) for i in keep),
                    candidate_ids=tuple(pool[i]["id"] for i in keep),
                )
            )
    examples.sort(key=lambda e: e.query_id)
    return examples[:max_queries] if max_queries else examples


def icl_from_file(
    path: str | Path, num_candidates: int = 5, max_queries: int | None = None
) -> list[TaskExample]:
    """JSON lines ``{"id", "task", "input", "output"}``."""
    records = []
    for line, row in read_jsonl(path):
        records.append(
            {
                key: str(require_field(row, key, (str, int), path, line))
                for key in ("id", "task", "input", "output")
            }
        )
    return icl_examples(records, num_candidates, max_queries)


def icl_from_hub(tasks: list[str], per_task: int = 200, num_candidates: int = 5) -> list[TaskExample]:
    """FLAN tasks from ``Muennighoff/flan`` (files ``train/{task}_10templates_train.jsonl``: ``inputs``,
    ``targets``, ``task``), the first ``per_task`` rows of each, streamed with the packaged json builder."""
    records: list[dict[str, Any]] = []
    for task in tasks:
        rows = iter_rows(json_files(FLAN_REPO, FLAN_FILES.format(task=task)), streaming=True, limit=per_task)
        for index, row in enumerate(rows):
            records.append(
                {"id": f"{task}-{index}", "task": task, "input": row["inputs"], "output": row["targets"]}
            )
    return icl_examples(records, num_candidates)
