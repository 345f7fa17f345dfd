"""Question answering: HotpotQA-format candidate files locally; MS MARCO and NQ from the hub.

The teacher scores ``−NLL(answer | "Knowledge: {paragraph} Question: {question} Answer:")``.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.task_example import TaskExample
from datamodules.mining import bm25_top_k
from datamodules.qa_candidates import load_qa_candidates
from datamodules.records import Document

SELECTIONS = ("bm25", "first", "all")
HUB_DATASETS = {
    # short name -> datasets.load_dataset arguments
    "msmarco": {"path": "microsoft/ms_marco", "name": "v1.1"},
    "nq": {"path": "Tevatron/wikipedia-nq"},
}


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
) -> list[TaskExample]:
    """QA examples from a ``qa_candidates.jsonl`` file (HotpotQA format, see :mod:`datamodules.qa_candidates`).

    Each question keeps ``num_candidates`` of its own paragraphs (``selection``); the file's paragraphs
    contain the gold ones, so the kept set usually does too. ``use_labels`` passes ``is_supporting`` on
    (the label-free protocol leaves it off).
    """
    examples = []
    for qa in sorted(load_qa_candidates(path, query_ids), key=lambda e: e.query.query_id):
        if not qa.query.answers:
            raise DataFormatError(
                path, f"question '{qa.query.query_id}' has no answer: the teacher needs one", field="answers"
            )
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
    return examples


def qa_from_hub(
    dataset: str,
    split: str = "train",
    num_candidates: int | None = 5,
    use_labels: bool = False,
    max_queries: int | None = None,
) -> list[TaskExample]:
    """MS MARCO (``microsoft/ms_marco`` v1.1: query, answers, passages{passage_text, is_selected}) or NQ
    (``Tevatron/wikipedia-nq``: query, answers, positive_passages, negative_passages) with ``datasets``.
    Needs network access (or a populated HF cache)."""
    from datasets import load_dataset

    if dataset not in HUB_DATASETS:
        raise ValueError(f"unknown QA hub data set '{dataset}' (known: {', '.join(HUB_DATASETS)})")
    rows = load_dataset(**HUB_DATASETS[dataset], split=split, streaming=max_queries is not None)
    examples = []
    for row in rows:
        if dataset == "msmarco":
            passages = []
            answers = tuple(a for a in row["answers"] if a and a != "No Answer Present.")
            texts = list(row["passages"]["passage_text"])
            labels = [bool(x) for x in row["passages"]["is_selected"]]
            query, query_id = row["query"], str(row["query_id"])
        else:
            answers = tuple(row["answers"])
            passages = list(row["positive_passages"]) + list(row["negative_passages"])
            texts = [f"{p['title']}: {p['text']}" if p.get("title") else p["text"] for p in passages]
            labels = [True] * len(row["positive_passages"]) + [False] * len(row["negative_passages"])
            query, query_id = row["query"], str(row["query_id"])
        if not answers or not texts:
            continue
        # NQ passages carry the corpus docid (a passage shared by two questions keeps one id, which the
        # in-batch masking of shared keys relies on); MS MARCO v1.1 passages (`passages` empty) have none.
        doc_ids = [str(p.get("docid") or f"{query_id}-{i}") for i, p in enumerate(passages)] or [
            f"{query_id}-{i}" for i in range(len(texts))
        ]
        documents = [Document(doc_id=d, text=t) for d, t in zip(doc_ids, texts)]
        keep = select_candidates(query, documents, num_candidates, "bm25")
        examples.append(
            TaskExample(
                task="qa",
                query_id=query_id,
                query=query,
                answers=answers,
                candidates=tuple(texts[i] for i in keep),
                candidate_ids=tuple(documents[i].doc_id for i in keep),
                labels=tuple(labels[i] for i in keep) if use_labels else None,
            )
        )
        if max_queries is not None and len(examples) >= max_queries:
            break
    return examples
