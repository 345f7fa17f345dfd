"""Plain records shared by every method: documents, queries, QA examples, and a retrieval corpus."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    title: str = ""

    def as_text(self) -> str:
        """The text an embedder sees: ``"title: text"`` when there is a title (BEIR convention)."""
        return f"{self.title}: {self.text}" if self.title else self.text


@dataclass(frozen=True)
class Query:
    query_id: str
    text: str
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    document: Document
    is_relevant: bool


@dataclass(frozen=True)
class QAExample:
    """A question with its target answers and a candidate set whose relevance is known."""

    query: Query
    candidates: tuple[Candidate, ...]
    origin: str = field(default="", compare=False)  # "<file>:<line>" the example was read from

    def location(self) -> tuple[str, int | None]:
        """``(file, line)`` of :attr:`origin` (line None when unknown), for messages."""
        path, _, line = self.origin.rpartition(":")
        return (path, int(line)) if path and line.isdigit() else (self.origin, None)

    def negatives_given(self, gold: set[str]) -> list[Document]:
        """Candidates that are neither marked relevant nor in ``gold`` (the qrels' relevant ids): a gold
        document is never a negative, whatever the candidate file says."""
        return [c.document for c in self.candidates if not c.is_relevant and c.document.doc_id not in gold]

    @property
    def positives(self) -> list[Document]:
        return [c.document for c in self.candidates if c.is_relevant]

    @property
    def negatives(self) -> list[Document]:
        return [c.document for c in self.candidates if not c.is_relevant]


@dataclass(frozen=True)
class TrainExample:
    """One training query: its judged positives and the negatives to sample groups from."""

    query_id: str
    query: str
    answers: tuple[str, ...]
    positives: tuple[Document, ...]
    negatives: tuple[Document, ...]


@dataclass
class RetrievalCorpus:
    """A BEIR-layout data set: corpus, queries and per-split relevance judgements."""

    corpus: dict[str, Document]
    queries: dict[str, Query]
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # split -> qid -> docid -> rel
    name: str = ""
    qrels_sources: dict[str, str] = field(default_factory=dict)  # split -> the qrels file (or hub table) read

    def gold_ids(self, split: str, query_id: str) -> set[str]:
        """The documents judged relevant (score > 0) for one query of ``split``."""
        return {doc_id for doc_id, rel in self.qrels[split].get(query_id, {}).items() if rel > 0}

    def split_queries(self, split: str) -> list[Query]:
        """The queries judged in ``split``, in a stable order."""
        if split not in self.qrels:
            raise KeyError(f"{self.name or 'data set'} has no split '{split}' (has: {sorted(self.qrels)})")
        return [self.queries[qid] for qid in sorted(self.qrels[split])]

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)

    def subsample(self, split: str, query_ids: list[str], size: int, seed: int = 0) -> RetrievalCorpus:
        """A fixed sub-corpus for cheap evaluations during training: every document judged for
        ``query_ids`` in ``split`` (so no relevant document is lost) plus a seeded random draw of the
        others up to ``size`` documents, in corpus order. The same arguments give the same sub-corpus."""
        judged = {doc for qid in query_ids for doc in self.qrels[split].get(qid, {}) if doc in self.corpus}
        others = [doc for doc in self.corpus if doc not in judged]
        keep = judged | set(random.Random(seed).sample(others, max(0, min(len(others), size - len(judged)))))
        return replace(self, corpus={doc: text for doc, text in self.corpus.items() if doc in keep})
