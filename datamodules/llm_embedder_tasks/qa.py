"""Question answering: HotpotQA-format candidate files locally; MS MARCO, NQ and HotpotQA from the hub.

The teacher scores ``−NLL(answer | "Knowledge: {paragraph} Question: {question} Answer:")``.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.hub_qa import iter_qa_examples
from datamodules.llm_embedder_tasks.task_example import TaskExample
from datamodules.mining import bm25_top_k
from datamodules.missing import MissingReport
from datamodules.qa_candidates import load_qa_candidates
from datamodules.records import Document

SELECTIONS = ("bm25", "first", "all")


def select_candidates(question: str, documents: list[Document], k: int | None, selection: str) -> list[int]:
    """Indices of the ``k`` candidates kept for one question, chosen without relevance labels:
    ``bm25`` (the question's own candidates ranked by BM25 against it), ``first`` (file order) or ``all``."""
    if selection not in SELECTIONS:
        raise ValueError(f"candidate selection must be one of {', '.join(SELECTIONS)}; got '{selection}'")
    if selection == "all" or k is None or k >= len(documents):
        return list(range(len(documents)))
    if selection == "first":
        return list(range(k))
    return bm25_top_k([question], documents, k)[0]


def qa_from_candidates_file(
    path: str | Path,
    query_ids: set[str] | None = None,
    num_candidates: int | None = 5,
    selection: str = "bm25",
    use_labels: bool = False,
    max_queries: int | None = None,
    on_missing: str = "error",
    task_name: str = "qa",
) -> list[TaskExample]:
    """QA examples from a ``qa_candidates.jsonl`` file (HotpotQA format, see :mod:`datamodules.qa_candidates`).

    Each question keeps ``num_candidates`` of its own paragraphs (``selection``); the file's paragraphs
    contain the gold ones, so the kept set usually does too. ``use_labels`` passes ``is_supporting`` on
    (the label-free protocol leaves it off). A question without an answer (the teacher needs one) or, with
    ``use_labels``, without a supporting paragraph goes through ``on_missing``: an error naming the file
    and line, or left out and counted (``skip``).
    """
    report = MissingReport(on_missing, key=f"data.tasks.{task_name}.on_missing")
    examples = []
    for qa in sorted(load_qa_candidates(path, query_ids, report=report), key=lambda e: e.query.query_id):
        if use_labels and not qa.positives:
            report.add(
                "no supporting paragraph (use_labels=true)", *qa.location(), "candidates", qa.query.query_id
            )
            continue
        documents = [c.document for c in qa.candidates]
        keep = select_candidates(qa.query.text, documents, num_candidates, selection)
        examples.append(
            TaskExample(
                task="qa",
                query_id=qa.query.query_id,
                query=qa.query.text,
                answers=qa.query.answers,
                candidates=tuple(documents[i].as_text() for i in keep),
                candidate_ids=tuple(documents[i].doc_id for i in keep),
                labels=tuple(qa.candidates[i].is_relevant for i in keep) if use_labels else None,
            )
        )
        if max_queries is not None and len(examples) >= max_queries:
            break
    report.notify()
    return examples


def qa_from_hub(
    dataset: str,
    split: str = "train",
    num_candidates: int | None = 5,
    use_labels: bool = False,
    max_queries: int | None = None,
    on_missing: str = "error",
    task_name: str = "qa",
) -> list[TaskExample]:
    """QA examples from a hub source of :mod:`datamodules.hub_qa` (``msmarco``: ``microsoft/ms_marco`` v2.1;
    ``nq``: ``Tevatron/wikipedia-nq`` parquet conversion; ``hotpotqa``), streamed. Each question keeps the
    ``num_candidates`` of its passages BM25 ranks highest against it. A question without an answer (MS
    MARCO's "No Answer Present.") goes through ``on_missing`` (``skip``: left out and counted)."""
    report = MissingReport(on_missing, key=f"data.tasks.{task_name}.on_missing")
    examples = []
    for qa in iter_qa_examples(dataset, split):
        if not qa.query.answers or not qa.candidates:
            report.add(
                "no answer" if qa.candidates else "no passage", *qa.location(), "answers", qa.query.query_id
            )
            continue
        documents = [c.document for c in qa.candidates]
        keep = select_candidates(qa.query.text, documents, num_candidates, "bm25")
        examples.append(
            TaskExample(
                task="qa",
                query_id=qa.query.query_id,
                query=qa.query.text,
                answers=qa.query.answers,
                candidates=tuple(documents[i].as_text() for i in keep),
                candidate_ids=tuple(documents[i].doc_id for i in keep),
                labels=tuple(qa.candidates[i].is_relevant for i in keep) if use_labels else None,
            )
        )
        if max_queries is not None and len(examples) >= max_queries:
            break
    report.notify()
    return examples
