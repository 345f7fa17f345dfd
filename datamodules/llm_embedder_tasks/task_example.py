"""The one record every LLM-Embedder task family produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskExample:
    """A query with its candidate keys, as one task family sees it.

    Attributes:
        task: the task family (``qa``, ``tool``, ``convsearch``, ``icl``, ``lrlm``, ``chat``).
        query_id: unique within the task.
        query: the query text (without instruction).
        answers: desired outputs the teacher scores (empty when the task has no teacher).
        candidates: the candidate key texts (without instruction).
        candidate_ids: one id per candidate (equal ids mean the same key, e.g. a tool shared by queries).
        labels: relevance of each candidate when the data gives it and the task may use it; ``None``
            for the label-free setting (the teacher decides).
    """

    task: str
    query_id: str
    query: str
    answers: tuple[str, ...]
    candidates: tuple[str, ...]
    candidate_ids: tuple[str, ...]
    labels: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.candidates) != len(self.candidate_ids):
            raise ValueError(
                f"{self.task}/{self.query_id}: {len(self.candidates)} candidates but {len(self.candidate_ids)} ids"
            )
        if self.labels is not None and len(self.labels) != len(self.candidates):
            raise ValueError(
                f"{self.task}/{self.query_id}: {len(self.candidates)} candidates but {len(self.labels)} labels"
            )

    @property
    def answer(self) -> str:
        """The desired output the teacher scores (the first answer; '' when there is none)."""
        return self.answers[0] if self.answers else ""
