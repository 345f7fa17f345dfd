"""Checkpoint files that a kill can never leave half-written, and that load without executing pickles.

:class:`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin (``Trainer(plugins=[...])``): every
checkpoint (``last.ckpt``, ``best-*.ckpt``, SLURM's ``hpc_ckpt_N.ckpt``) is serialised into a temporary file
in the same folder, flushed and fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX)
and the folder entry fsynced. A ``kill -9`` at any moment leaves either the previous complete file or the
new complete file, never a truncated one. Sharded (FSDP) checkpoints are folders written by every rank: they
are staged in a hidden sibling folder, completed with a marker file and renamed into place
(:func:`publish_sharded_checkpoint`); a folder without the marker is never resumed from. Loading uses ``torch.load(weights_only=True)`` unless told
otherwise, so a tampered checkpoint cannot run code.
"""

from __future__ import annotations

import os
import shutil
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
COMPLETE_MARKER = "COMPLETE"  # written last into a sharded checkpoint folder: every shard and meta.pt are in
STAGING_SUFFIX = ".staging"
PREVIOUS_SUFFIX = ".previous"


class IncompleteCheckpointError(RuntimeError):
    """A sharded checkpoint folder whose writer was killed before it finished."""


def staging_path(path: Path) -> Path:
    """The hidden sibling folder a sharded save of ``path`` writes into before it is renamed into place."""
    return path.with_name(f".{path.name}{STAGING_SUFFIX}")


def previous_path(path: Path) -> Path:
    """Where the replaced checkpoint folder sits for the moment between the two renames of a publish."""
    return path.with_name(f".{path.name}{PREVIOUS_SUFFIX}")


def save_sharded_state(state: dict[str, Any], folder: Path) -> None:
    """Every rank writes its shards of ``state`` into ``folder`` (``torch.distributed.checkpoint``)."""
    from torch.distributed.checkpoint import FileSystemWriter, save

    save(state, storage_writer=FileSystemWriter(folder))


def publish_sharded_checkpoint(staging: Path, path: Path, metadata: dict[str, Any]) -> None:
    """Rank 0, after every rank wrote its shards into ``staging``: add ``meta.pt`` and the completion
    marker, then replace ``path`` by ``staging`` (rename the old folder away, rename the new one in,
    delete the old one). A kill between the two renames leaves two complete folders, both resumable
    (:func:`sharded_checkpoint_candidates`); a kill before the marker leaves ``path`` untouched."""
    save_atomically(metadata, staging / SHARDED_METADATA)
    marker = staging / COMPLETE_MARKER
    with open(marker, "w") as handle:
        handle.write(f"step {metadata.get('global_step', 0)}\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(staging)
    previous = previous_path(path)
    shutil.rmtree(previous, ignore_errors=True)
    if path.is_dir():
        path.rename(previous)
    elif path.exists():
        path.unlink()  # a single-file checkpoint of an earlier non-sharded run
    staging.rename(path)
    fsync_directory(path.parent)
    shutil.rmtree(previous, ignore_errors=True)


def sharded_checkpoint_candidates(path: Path) -> list[Path]:
    """Complete checkpoint folders a kill during a publish of ``path`` may have left besides ``path``."""
    return [p for p in (staging_path(path), previous_path(path)) if (p / COMPLETE_MARKER).is_file()]


def read_global_step(path: str | Path) -> int:
    """The ``global_step`` stored in a Lightning checkpoint, read lazily (memory-mapped, weights only).

    A sharded (FSDP) checkpoint is a folder; its step is in ``meta.pt``. A folder without the completion
    marker is refused with :class:`IncompleteCheckpointError` (its writer was killed mid-save).
    """
    path = Path(path)
    if path.is_dir() and not (path / COMPLETE_MARKER).is_file():
        raise IncompleteCheckpointError(
            f"{path} is a half-written sharded checkpoint (no {COMPLETE_MARKER} marker): its writer was killed"
        )
    source = path / SHARDED_METADATA if path.is_dir() else path
    checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=not path.is_dir())
    return int(checkpoint.get("global_step", 0))
