"""The one error type for bad input files: it always names the file, and the line and field when known."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file is missing, malformed, or inconsistent.

    The message always starts with ``<file>`` and, when known, ``:<line>`` and ``field '<name>'``,
    so a user can open the exact spot.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class MTEBTaskUnavailableError(RuntimeError):
    """An MTEB hub task's data cannot be loaded (offline, or not downloadable)."""
