"""Strict JSON-lines reading: every problem is reported with file, line and field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError

MAX_LINE_BYTES = 16 * 1024 * 1024  # a line longer than this is a broken file, not a document
BOM = "\ufeff"


def read_jsonl(
    path: str | Path, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    A UTF-8 byte-order mark at the start of the file (as some Windows editors write) is skipped.
    Raises :class:`DataFormatError` for a missing file, non-UTF-8 bytes, an over-long line, invalid
    JSON, or a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    with path.open("rb") as handle:
        line_number = 0
        while raw := handle.readline(max_line_bytes + 1):  # bounded: an enormous line is never read whole
            line_number += 1
            if len(raw) > max_line_bytes:
                raise DataFormatError(
                    path, f"line is longer than the {max_line_bytes}-byte limit (a broken file?)", line_number
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFormatError(
                    path, f"not valid UTF-8 ({err.reason} at byte {err.start})", line_number
                ) from None
            if line_number == 1:
                text = text.removeprefix(BOM)
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    path, f"malformed JSON ({err.msg}, column {err.colno})", line_number
                ) from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line_number)
            yield line_number, obj


def require_field(
    obj: dict[str, Any], field: str, kind: type | tuple[type, ...], path: Path | str, line: int
) -> Any:
    """Return ``obj[field]`` checked against ``kind``; raise a DataFormatError naming file/line/field."""
    if field not in obj:
        raise DataFormatError(path, "missing", line, field)
    value = obj[field]
    if not isinstance(value, kind) or (
        kind is not bool and isinstance(value, bool) and bool not in _as_tuple(kind)
    ):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise DataFormatError(path, f"expected {names}, got {type(value).__name__}", line, field)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
