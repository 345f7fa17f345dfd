"""Where the project caches things on this machine, and how it writes them so a kill never corrupts one.

Every writer goes through a temporary file (or folder) and an atomic rename, so a ``kill -9`` mid-write
leaves the previous state. Readers detect damage that happens anyway (a truncated copy, a full disk, a
hand-edited file) and recompute instead of using it:

- ``build_dir_atomically`` folders carry a manifest of file sizes in their ``.complete`` marker; a
  folder whose files no longer match is rebuilt. Builders of the same folder wait on a file lock.
- ``write_checked_bytes`` / ``read_checked_bytes`` (and the ``*_checked_json`` / ``*_checked_tensors``
  wrappers, and ``cached_tensors``) store a length + SHA-256 header: a damaged entry reads as missing
  (``None``), is deleted, and its caller recomputes it.
- ``cache_key`` is the one key function: the SHA-1 of a canonical JSON of what an entry depends on.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
CHECKED_MAGIC = b"LSR-CHECKED-1\n"


def cache_key(obj: Any, texts: Iterable[str] = ()) -> str:
    """Hex SHA-1 of the canonical JSON of ``obj`` (sorted keys, non-ASCII kept, ``str()`` for other
    types), followed by each of ``texts`` and a NUL byte (long text lists are hashed without building
    one JSON string). Equal inputs give equal keys across processes and runs."""
    digest = hashlib.sha1(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def cache_root() -> Path:
    """``$LSR_CACHE_DIR``, else ``~/.cache/llm-supervised-retrievers``."""
    root = Path(os.environ.get("LSR_CACHE_DIR", Path.home() / ".cache" / "llm-supervised-retrievers"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed), released on exit or when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block without disturbing the global Python/NumPy/torch generators (e.g. a cache build that
    initialises a model), so a run draws the same random numbers whether its caches were warm or cold."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(
        devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    ):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def folder_manifest(folder: Path) -> dict[str, int]:
    """``{relative path: size in bytes}`` of every file under ``folder`` except the marker."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".complete"
    }


def folder_problem(target: Path) -> str | None:
    """Why a built folder cannot be used (missing marker, missing or resized file), or None if it can."""
    marker = target / ".complete"
    if not marker.is_file():
        return "no .complete marker (an interrupted build)" if target.exists() else "missing"
    try:
        manifest = json.loads(marker.read_text()).get("files")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return (
            None if marker.read_bytes().strip() == b"ok" else "unreadable .complete marker"
        )  # "ok": older builds
    for name, size in (manifest or {}).items():
        file = target / name
        if not file.is_file():
            return f"file '{name}' is missing"
        if file.stat().st_size != size:
            return f"file '{name}' has {file.stat().st_size} bytes, expected {size}"
    return None


def build_dir_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Create ``target`` by running ``build(tmp_dir)`` and renaming: a killed build leaves no partial ``target``.

    A finished folder is reused while its files match the manifest written at build time; otherwise it is
    rebuilt (with a warning). Concurrent builders of the same folder take turns on a lock file, and the
    temporaries of builders that were killed are removed.
    """
    target = Path(target)
    if folder_problem(target) is None:
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        problem = folder_problem(target)
        if problem is None:  # another process built it while we waited
            return target
        if problem != "missing":
            log.warning("cache folder %s is unusable (%s); rebuilding it", target, problem)
        for stale in target.parent.glob(
            f".{target.name}.*"
        ):  # killed builders' temporaries (we hold the lock)
            suffix = stale.name.removeprefix(f".{target.name}.")
            if stale.is_dir() and "." not in suffix and len(suffix) == 8:  # mkdtemp's random part
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with preserved_random_state():
                build(tmp)
            (tmp / ".complete").write_text(
                json.dumps({"files": folder_manifest(tmp)}, indent=1, sort_keys=True) + "\n"
            )
            if target.exists():
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomically(path: Path, obj: Any) -> None:
    write_bytes_atomically(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors_atomically(path: Path, tensors: dict[str, Any]) -> None:
    """``torch.save`` through a temp file + fsync + rename; load back with ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    write_bytes_atomically(Path(path), buffer.getvalue())


# ---- checksummed cache entries: damage is detected, the entry recomputed ------------------------------------
def write_checked_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` atomically behind a header holding its length and SHA-256."""
    header = CHECKED_MAGIC + f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    write_bytes_atomically(Path(path), header + payload)


def checked_payload_problem(data: bytes) -> tuple[bytes | None, str | None]:
    """``(payload, None)`` for an intact entry, else ``(None, what is wrong)``."""
    if not data.startswith(CHECKED_MAGIC):
        return None, "no checksum header"
    line_end = data.find(b"\n", len(CHECKED_MAGIC))
    try:
        length_text, digest = data[len(CHECKED_MAGIC) : line_end].decode().split()
        length = int(length_text)
    except ValueError:
        return None, "damaged checksum header"
    payload = data[line_end + 1 :]
    if len(payload) != length:
        return None, f"{len(payload)} bytes of {length} (truncated)" if len(
            payload
        ) < length else f"{len(payload)} bytes, expected {length}"
    if hashlib.sha256(payload).hexdigest() != digest:
        return None, "checksum mismatch"
    return payload, None


def read_checked_bytes(path: Path) -> bytes | None:
    """The payload of an entry written by :func:`write_checked_bytes`; None when absent or damaged.

    A damaged entry is logged, deleted and reported as absent, so the caller recomputes it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    payload, problem = checked_payload_problem(data)
    if problem is not None:
        discard_damaged(path, problem)
    return payload


def discard_damaged(path: Path, problem: str) -> None:
    log.warning("cache entry %s is damaged (%s); it will be recomputed", path, problem)
    Path(path).unlink(missing_ok=True)


def write_checked_json(path: Path, obj: Any) -> None:
    write_checked_bytes(path, json.dumps(obj, sort_keys=True).encode())


def read_checked_json(path: Path) -> Any | None:
    payload = read_checked_bytes(path)
    if payload is None:
        return None
    try:
        return json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        discard_damaged(path, f"not JSON: {err}")
        return None


def save_checked_tensors(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_checked_bytes(path, buffer.getvalue())


def load_checked_tensors(path: Path) -> Any | None:
    """Tensors saved by :func:`save_checked_tensors`, loaded with ``weights_only=True``; None if absent/damaged."""
    payload = read_checked_bytes(path)
    if payload is None:
        return None
    try:
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # an intact checksum around an unloadable object: still never used
        discard_damaged(path, f"{type(err).__name__}: {err}")
        return None


def cached_tensors(
    path: Path, compute: Callable[[], Any], every_rank: Callable[[bool], bool] | None = None
) -> Any:
    """Load the checked entry at ``path``, or ``compute()`` it, store it and return it.

    ``every_rank``: given whether this process found an intact entry, whether every process of a
    distributed run did; if not, all of them compute (``compute`` may hold collective operations).
    """
    value = load_checked_tensors(path)
    if every_rank is not None and not every_rank(value is not None):
        value = None
    if value is None:
        value = compute()
        save_checked_tensors(path, value)
    return value
