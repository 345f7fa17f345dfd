"""Plain records shared by every method: documents, queries, QA examples, and a retrieval corpus."""

from __future__ import annotations

from dataclasses import dataclass, field


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

    @property
    def positives(self) -> list[Document]:
        return [c.document for c in self.candidates if c.is_relevant]

    @property
    def negatives(self) -> list[Document]:
        return [c.document for c in self.candidates if not c.is_relevant]


@dataclass
class RetrievalCorpus:
    """A BEIR-layout data set: corpus, queries and per-split relevance judgements."""

    corpus: dict[str, Document]
    queries: dict[str, Query]
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # split -> qid -> docid -> rel
    name: str = ""

    def split_queries(self, split: str) -> list[Query]:
        """The queries judged in ``split``, in a stable order."""
        if split not in self.qrels:
            raise KeyError(f"{self.name or 'data set'} has no split '{split}' (has: {sorted(self.qrels)})")
        return [self.queries[qid] for qid in sorted(self.qrels[split])]

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)
