"""SIGTERM during training: every rank stops at the end of the same training batch, after saving ``last.ckpt``.

Lightning's own SIGTERM handler (``lightning/pytorch/trainer/connectors/signal_connector.py``,
``_sigterm_notifier_fn``) runs ``dist.broadcast`` *inside the signal handler*, wherever the main thread was
interrupted. Under several ranks that broadcast meets whatever collective the other ranks are in (a DDP
gradient all-reduce, a checkpoint barrier) or none at all: a rank that sits in a C++ collective cannot run
its own handler, so both wait for each other. A requeued DDP job (``scontrol requeue`` makes SLURM send
SIGTERM to every task) therefore hangs until SLURM's ``KillWait`` SIGKILL; a SIGTERM that reaches one rank
only (``kill`` of one process, a node-local OOM killer) hangs the whole job.

:class:`StopOnSigterm` replaces that handler for the training loop (from ``on_train_start``, after Lightning
registered its own; Lightning restores the previous handlers when fit ends). Its handler only sets a flag.
At the end of every training batch the ranks agree on it with one all-reduce (MAX) of a CPU integer over a
gloo group, so no GPU synchronisation is added; when any rank was signalled, every rank saves ``last.ckpt``
(through :class:`callbacks.resume.ResumeCheckpoint`, which also writes the batch's CSV row first) and leaves
fit with Lightning's ``SIGTERMException``, the same exception Lightning itself raises on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.resume import ResumeCheckpoint


def flag_group() -> Any:
    """A gloo process group for CPU flags (the default group when it is gloo already); ``None`` alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")  # collective: every rank calls it in setup


def any_rank(flag: bool, group: Any) -> bool:
    """Whether ``flag`` is set on any rank of ``group`` (every rank must call this at the same point)."""
    if group is None:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


class StopOnSigterm(L.Callback):
    """On SIGTERM (any rank), all ranks save ``last.ckpt`` at the end of the same training batch and exit."""

    def __init__(self) -> None:
        self.received = False
        self._group: Any = None
        self._installed = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._group = flag_group()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.received = True  # acted on at the end of the running training batch, by every rank together

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._installed or not any_rank(self.received, self._group):
            return
        saver = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
        if saver is not None:
            saver.save_now(trainer)
        if trainer.is_global_zero:
            where = f"saved {saver.last_model_path}" if saver is not None else "no ResumeCheckpoint to save"
            print(f"SIGTERM: stopping at step {trainer.global_step} ({where})", file=sys.stderr, flush=True)
        raise SIGTERMException

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._installed = False
