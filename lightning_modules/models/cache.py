"""Where the project caches things on this machine, and how it writes them so a kill never corrupts one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cache_root() -> Path:
    """``$LSR_CACHE_DIR``, else ``~/.cache/llm-supervised-retrievers``."""
    root = Path(os.environ.get("LSR_CACHE_DIR", Path.home() / ".cache" / "llm-supervised-retrievers"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_dir_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Create ``target`` by running ``build(tmp_dir)`` and renaming: a killed build leaves no partial ``target``."""
    if target.is_dir() and (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists():  # an older partial attempt without the marker
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_bytes_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomically(path: Path, obj: Any) -> None:
    write_bytes_atomically(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors_atomically(path: Path, tensors: dict[str, Any]) -> None:
    """``torch.save`` through a temp file + rename; load back with ``torch.load(weights_only=True)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
