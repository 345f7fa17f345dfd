"""Tool retrieval in the ToolBench / ToolLLM format (Qin et al., 2023; Apache-2.0).

A query file (``G1_query.json`` ...) is a JSON list of ``{"query", "query_id", "api_list": [{"tool_name",
"api_name", "api_description", "category_name", ...}], "relevant APIs": [[tool_name, api_name], ...]}``.
Keys are API descriptions; the relevant APIs are the positives, the query's other APIs and APIs of other
queries the negatives. The task is contrastive only (reference settings), so no answer is needed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.task_example import TaskExample


def api_id(tool_name: str, api_name: str) -> str:
    return f"{tool_name}::{api_name}"


def api_text(api: dict[str, Any]) -> str:
    """The key text of one API: tool, API name, category, description and parameter names."""
    params = [
        p.get("name", "") for p in api.get("required_parameters", []) + api.get("optional_parameters", [])
    ]
    description = (api.get("api_description") or "").strip()
    parts = [f"{api['tool_name']}: {api['api_name']}", f"category: {api.get('category_name', '')}"]
    if description:
        parts.append(description)
    if params:
        parts.append("parameters: " + ", ".join(p for p in params if p))
    return ". ".join(parts)


def read_toolbench_queries(path: str | Path) -> list[dict[str, Any]]:
    """Rows of one ToolBench query file, checked; errors name the file, the row and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is accepted
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"malformed JSON ({error.msg})", error.lineno) from None
    if not isinstance(rows, list):
        raise DataFormatError(path, f"expected a JSON list of queries, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        where = f"[{index}]"
        for field, kind in (("query", str), ("api_list", list), ("relevant APIs", list)):
            if not isinstance(row, dict) or field not in row:
                raise DataFormatError(path, "missing", field=f"{where}.{field}")
            if not isinstance(row[field], kind):
                raise DataFormatError(path, f"expected {kind.__name__}", field=f"{where}.{field}")
        for j, api in enumerate(row["api_list"]):
            for field in ("tool_name", "api_name"):
                if not isinstance(api, dict) or not isinstance(api.get(field), str):
                    raise DataFormatError(
                        path, "missing or not a string", field=f"{where}.api_list[{j}].{field}"
                    )
        for j, pair in enumerate(row["relevant APIs"]):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise DataFormatError(
                    path, "expected [tool_name, api_name]", field=f"{where}.relevant APIs[{j}]"
                )
    return rows


def tool_examples(
    rows: list[dict[str, Any]], num_candidates: int = 8, seed: int = 0, source: str = "toolbench"
) -> list[TaskExample]:
    """Each query's relevant APIs plus negatives: its own other APIs first, then APIs of other queries."""
    catalogue: dict[str, str] = {}
    for row in rows:
        for api in row["api_list"]:
            catalogue.setdefault(api_id(api["tool_name"], api["api_name"]), api_text(api))
    examples = []
    catalogue_order = sorted(catalogue)  # sorted once; each query filters it (no per-query sort)
    for index, row in enumerate(rows):
        own = [api_id(a["tool_name"], a["api_name"]) for a in row["api_list"]]
        relevant = [api_id(t, a) for t, a in row["relevant APIs"]]
        missing = [r for r in relevant if r not in catalogue]
        if missing:
            raise DataFormatError(
                source, f"relevant API(s) {missing} are not in any api_list", field=f"[{index}].relevant APIs"
            )
        rng = random.Random(f"{seed}-{index}")
        own_set = set(own)
        others = [a for a in catalogue_order if a not in own_set]
        rng.shuffle(others)
        negatives = [a for a in own if a not in relevant] + others
        chosen = list(dict.fromkeys(relevant + negatives))[: max(num_candidates, len(relevant) + 1)]
        query_id = str(row.get("query_id", index))
        examples.append(
            TaskExample(
                task="tool",
                query_id=query_id,
                query=row["query"],
                answers=(),
                candidates=tuple(catalogue[a] for a in chosen),
                candidate_ids=tuple(chosen),
                labels=tuple(a in relevant for a in chosen),
            )
        )
    return examples


def with_file_query_ids(file: str | Path, rows: Iterable[Any]) -> list[dict[str, Any]]:
    """The rows with ``query_id`` prefixed by the file's stem (``G1_query-3``): ToolBench numbers the queries
    of every file from 1, so the bare ids collide across files. A row without an id takes its index."""
    stem = Path(str(file).split("?")[0]).stem
    return [{**dict(row), "query_id": f"{stem}-{dict(row).get('query_id', i)}"} for i, row in enumerate(rows)]


def tool_from_files(paths: list[str | Path], num_candidates: int = 8, seed: int = 0) -> list[TaskExample]:
    """Local ToolBench query files (e.g. the vendored ``toolbench_example``)."""
    rows = [row for path in paths for row in with_file_query_ids(path, read_toolbench_queries(path))]
    return tool_examples(rows, num_candidates, seed, source=", ".join(map(str, paths)))


def tool_from_hub(
    data_files: str | list[str], split: str = "train", num_candidates: int = 8, seed: int = 0
) -> list[TaskExample]:
    """ToolBench query files from a URL or the hub through ``datasets.load_dataset("json", data_files=...)``
    (ToolBench ships its queries as JSON files; point ``data_files`` at them). Each file is loaded on its own
    and its query ids prefixed with the file's stem, as :func:`tool_from_files` does (ToolBench numbers the
    queries of every file from 1)."""
    from datasets import load_dataset

    files = [data_files] if isinstance(data_files, str) else list(data_files)
    rows = [
        row
        for file in files
        for row in with_file_query_ids(file, load_dataset("json", data_files=file, split=split))
    ]
    return tool_examples(rows, num_candidates, seed, source=", ".join(map(str, files)))
