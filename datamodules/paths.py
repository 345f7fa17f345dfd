"""Data set aliases: names that resolve to data shipped inside the package."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ALIASES = {
    "hotpotqa": PACKAGE_DIR / "data" / "hotpotqa",
    "tiny_hotpotqa": PACKAGE_DIR / "fixtures" / "tiny_hotpotqa",
}


def resolve_data_path(path: str) -> Path:
    """An alias (``hotpotqa``, ``tiny_hotpotqa``) or a local folder."""
    return ALIASES.get(path, Path(path).expanduser())
