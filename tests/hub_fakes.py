"""An offline stand-in for ``datasets.load_dataset`` serving real-schema rows (tests/fixtures/hub_rows/).

Every call is bound against the real ``load_dataset`` signature (a misspelt keyword fails), recorded, and
checked to be script-free: a repository id that is not a known loading-script repository, or a packaged
builder (``parquet``, ``json``) reading ``data_files``; never ``trust_remote_code`` or a ``.py`` path.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import datasets

from datamodules.hub import SCRIPT_REPOSITORIES

REAL_LOAD_DATASET = datasets.load_dataset
HUB_ROWS = Path(__file__).resolve().parent / "fixtures" / "hub_rows"
PACKAGED_BUILDERS = {"parquet", "json"}


def hub_rows(name: str) -> list[dict[str, Any]]:
    """The rows of ``tests/fixtures/hub_rows/<name>.jsonl`` (annotation keys ``_truncated*`` dropped)."""
    path = HUB_ROWS / (name if name.endswith((".json", ".jsonl")) else f"{name}.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if not k.startswith("_truncated")} for row in rows]


def script_free_problem(arguments: dict[str, Any]) -> str | None:
    """Why a ``load_dataset`` call could run a loading script, or None when it cannot."""
    path = str(arguments["path"])
    if "config_kwargs" in arguments:
        return f"extra keywords {arguments['config_kwargs']} (trust_remote_code?)"
    if path.endswith(".py"):
        return f"a script path {path}"
    if path in PACKAGED_BUILDERS:
        files = arguments.get("data_files")
        files = [files] if isinstance(files, str) else list(files or [])
        return None if files else f"builder {path} without data_files"
    if path in SCRIPT_REPOSITORIES or path.startswith("BeIR/") or "/" not in path:
        return f"{path} is a loading-script repository (or no repository id)"
    return None


class FakeHub:
    """``tables`` maps ``(path, config or data_files, split)`` to rows (or an exception to raise); rows are
    served as a ``Dataset``, or an ``IterableDataset`` under ``streaming=True``."""

    def __init__(self, tables: dict[tuple, Any]):
        self.tables = tables
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any):
        arguments = dict(inspect.signature(REAL_LOAD_DATASET).bind(*args, **kwargs).arguments)
        problem = script_free_problem(arguments)
        assert problem is None, f"load_dataset{arguments}: {problem}"
        self.calls.append(arguments)
        selector = arguments.get("name") or arguments.get("data_files")
        if isinstance(selector, list):
            selector = tuple(selector)
        key = (arguments["path"], selector, arguments.get("split"))
        if key not in self.tables:
            raise FileNotFoundError(f"fake hub has no table {key}")
        table = self.tables[key]
        if isinstance(table, Exception):
            raise table
        dataset = datasets.Dataset.from_list(table)
        return dataset.to_iterable_dataset() if arguments.get("streaming") else dataset


def converted(repo: str, config: str, split: str) -> str:
    """The ``data_files`` of a split of the hub's parquet conversion, as the loaders write it."""
    return f"hf://datasets/{repo}@refs%2Fconvert%2Fparquet/{config}/{split}/*.parquet"
