"""Checkpoint files that a kill can never leave half-written, and that load without executing pickles.

:class:`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin (``Trainer(plugins=[...])``): every
checkpoint (``last.ckpt``, ``best-*.ckpt``, SLURM's ``hpc_ckpt_N.ckpt``) is serialised into a temporary file
in the same folder, flushed and fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX)
and the folder entry fsynced. A ``kill -9`` at any moment leaves either the previous complete file or the
new complete file, never a truncated one. Loading uses ``torch.load(weights_only=True)`` unless told
otherwise, so a tampered checkpoint cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".partial"


def temp_path_for(path: Path) -> Path:
    """The temporary sibling a save of ``path`` writes into (one per process, so ranks never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete temporaries left next to ``path`` by writers that were killed; return what was removed."""
    removed = []
    for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        pid = stale.name.removeprefix(f".{path.name}.").removesuffix(TEMP_SUFFIX)
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue  # another live process is writing it right now
        stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_directory(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(obj: Any, path: str | Path, serialize: Callable[[Any, Any], None] = torch.save) -> None:
    """``serialize(obj, handle)`` into a temp file, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as handle:
            serialize(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with atomic, durable writes and ``weights_only=True`` loading by default.

    Args:
        weights_only: the default for :meth:`load_checkpoint` when Lightning passes ``None``. ``True``
            refuses anything but tensors and plain containers (checkpoints of this project contain only
            those: hyperparameters are saved as plain dicts).
    """

    def __init__(self, weights_only: bool = True):
        super().__init__()
        self.weights_only = weights_only

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        save_atomically(checkpoint, Path(path))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(
            path,
            map_location=map_location,
            weights_only=self.weights_only if weights_only is None else weights_only,
        )


SHARDED_METADATA = (
    "meta.pt"  # what Lightning's FSDP strategy writes next to the shards of a checkpoint folder
)


def read_global_step(path: str | Path) -> int:
    """The ``global_step`` stored in a Lightning checkpoint, read lazily (memory-mapped, weights only).

    A sharded (FSDP) checkpoint is a folder; its step is in ``meta.pt``, written after the shards.
    """
    path = Path(path)
    source = path / SHARDED_METADATA if path.is_dir() else path
    checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=not path.is_dir())
    return int(checkpoint.get("global_step", 0))
