"""What to do with a question that cannot be trained on (no positive, no answer): the ``on_missing`` policy.

``error`` (the default) stops at the first such question with ``<file>:<line>: field '<field>': ...``;
``skip`` leaves every such question out and reports one counted notice per reason (with the first
place it happened), so nothing is dropped silently. See docs/reliability.md ("Bad input files").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.errors import DataFormatError

ON_MISSING = ("error", "skip")


class DataNotice(UserWarning):
    """A counted notice about the data (questions left out, labels reconciled): shown, never fatal."""


def check_policy(policy: str, key: str = "data.on_missing") -> str:
    if policy not in ON_MISSING:
        raise ValueError(f"{key} must be one of {', '.join(ON_MISSING)}; got '{policy}'")
    return policy


@dataclass
class MissingReport:
    """Collects the questions left out under ``on_missing=skip`` (or raises at the first under ``error``).

    Args:
        policy: ``error`` or ``skip``.
        key: the config key users set, named in the messages.
    """

    policy: str = "error"
    key: str = "data.on_missing"
    found: dict[str, list[str]] = field(default_factory=dict)  # reason -> ["file:line", ...]
    query_ids: set[str] = field(default_factory=set)  # every question left out

    def __post_init__(self) -> None:
        check_policy(self.policy, self.key)

    def add(self, reason: str, path: str | Path, line: int | None, field_name: str, query_id: str) -> None:
        """Record one question with a defect ``reason`` (e.g. ``"no answer"``); raise under ``error``."""
        if self.policy == "error":
            raise DataFormatError(
                path,
                f"question '{query_id}' has {reason}; fix the data or set {self.key}=skip to leave such "
                "questions out (they are counted)",
                line,
                field_name,
            )
        self.found.setdefault(reason, []).append(f"{path}:{line}" if line is not None else str(path))
        self.query_ids.add(query_id)

    def count(self) -> int:
        return sum(len(where) for where in self.found.values())

    def notify(self) -> None:
        """One warning per reason: how many questions were left out and where the first one is."""
        for reason, where in self.found.items():
            warnings.warn(
                f"left out {len(where)} question(s) with {reason} ({self.key}=skip); first: {where[0]}",
                DataNotice,
                stacklevel=2,
            )
