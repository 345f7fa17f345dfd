"""The one record every LLM-Embedder task family produces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any


class SharedSlice(Sequence):
    """Items ``[start, stop)`` of a list that many examples share (a dialogue's growing history): made in
    O(1), without copying, so building every turn's "all earlier exchanges" stays linear in the turns.
    Reads like a tuple (length, indexing, iteration) and equals any sequence of the same items."""

    __slots__ = ("_items", "_start", "_stop")

    def __init__(self, items: list[Any], start: int, stop: int):
        if not 0 <= start <= stop <= len(items):
            raise ValueError(f"slice [{start}, {stop}) outside a list of {len(items)}")
        self._items, self._start, self._stop = items, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self._items[self._start + position]

    def __iter__(self) -> Iterator[Any]:
        return islice(self._items, self._start, self._stop)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"SharedSlice({tuple(self)!r})"


@dataclass(frozen=True)
class TaskExample:
    """A query with its candidate keys, as one task family sees it.

    Attributes:
        task: the task family (``qa``, ``tool``, ``convsearch``, ``icl``, ``lrlm``, ``chat``).
        query_id: unique within the task.
        query: the query text (without instruction).
        answers: desired outputs the teacher scores (empty when the task has no teacher).
        candidates: the candidate key texts (without instruction); a tuple, or a :class:`SharedSlice`.
        candidate_ids: one id per candidate (equal ids mean the same key, e.g. a tool shared by queries).
        labels: relevance of each candidate when the data gives it and the task may use it; ``None``
            for the label-free setting (the teacher decides).
    """

    task: str
    query_id: str
    query: str
    answers: tuple[str, ...]
    candidates: Sequence[str]
    candidate_ids: Sequence[str]
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
