"""What an interrupted run needs to continue exactly: a recent ``last.ckpt`` and the random-number state.

- :class:`ResumeCheckpoint` writes ``<run>/checkpoints/last.ckpt`` every ``every_n_train_steps`` optimizer
  steps and once more when training ends, independent of any monitored metric (the "best" checkpoint is
  a separate ``ModelCheckpoint``). The batch's CSV metrics row is written before the checkpoint, so a kill
  right after it loses no row. On SIGINT (Ctrl-C) or SIGTERM during training it finishes the running batch,
  writes ``last.ckpt`` (atomically, through the checkpoint IO) and stops with :class:`TrainingStopped`; a
  second Ctrl-C stops at once.
- :class:`PreemptionAtBatchEnd` moves SLURM's preemption checkpoint (SIGUSR1) to the end of the running
  training batch.
- :class:`RandomStateCheckpoint` stores the Python, NumPy and torch (CPU and CUDA) generator states in
  each checkpoint and restores them just before the first resumed batch, so dropout draws the same masks
  as in an uninterrupted run. The states are kept as tensors and plain lists, which
  ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.csv_logger import write_step_metrics_now

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(Exception):  # noqa: N818 - an outcome, not a failure
    """Training stopped on a signal after ``last.ckpt`` was written at the end of the running batch."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; last checkpoint: {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class ResumeCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, at the end of training, and when a stop signal
    (SIGINT, SIGTERM) arrives during training: then at the end of the running batch, before stopping."""

    def __init__(
        self, dirpath: str | None = None, every_n_train_steps: int = 10, stop_on_signals: bool = True
    ):
        if every_n_train_steps < 1:
            raise ValueError(
                f"callbacks.resume_checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps}"
            )
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )
        self._in_batch_end = False
        self.stop_on_signals = stop_on_signals
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.stop_on_signals and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:  # installed after Lightning's own (which only flags SIGTERM)
                self._previous_handlers[signum] = signal.signal(signum, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, keeping the previous last.ckpt
        self._stop_signal = signum
        print(
            f"\n{signal.Signals(signum).name} received: finishing the current batch, then writing last.ckpt"
            + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""),
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._in_batch_end = True
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if self._stop_requested(trainer):
                if self._last_global_step_saved != trainer.global_step:
                    self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
                signum = self._stop_signal or signal.SIGTERM  # another rank got it: every rank stops here
                raise TrainingStopped(signum, trainer.global_step, self.last_model_path or None)
        finally:
            self._in_batch_end = False

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        """Whether any rank received a stop signal (every rank stops after the same batch)."""
        requested = self._stop_signal is not None
        if trainer.world_size > 1:
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        return requested

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self._in_batch_end:  # this batch's CSV row reaches the disk before the checkpoint covering it
            write_step_metrics_now(trainer)
        super()._save_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also save the final step, so re-running a finished command resumes at the end and trains nothing."""
        if self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()  # Lightning skips the teardown hooks when fit ends in an exception

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}


def collect_random_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain Python values (weights-only loadable)."""
    python_version, python_state, python_gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": python_version, "state": list(python_state), "gauss_next": python_gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(L.Callback):
    """Saves the generators' states with every checkpoint; restores them when training resumes."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"random_state": collect_random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("random_state")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # restored here, after models, optimizers and the first (prefetched) batch are set up, i.e. right
        # where the interrupted run stood when it wrote the checkpoint: at the end of a training batch
        if self._pending is not None:
            restore_random_state(self._pending)
            self._pending = None


class PreemptionAtBatchEnd(L.Callback):
    """Under SLURM auto-requeue, take the preemption checkpoint at the end of the running training batch.

    Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_N.ckpt`` and calls ``scontrol
    requeue`` the moment the requeue signal (SIGUSR1) arrives, even half-way through a forward pass, so
    the checkpoint would hold the random state of a half-done batch. This callback installs the signal
    handler first (Lightning then keeps it) and runs Lightning's own save-and-requeue handler at the end
    of the current training batch, or at once when no training batch is running (e.g. during evaluation).
    Does nothing outside SLURM auto-requeue.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._signal: int | None = None
        self._previous_handler: Any = None
        self._in_batch = False
        self._in_batch_end = False
        self._pending = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        import signal

        self._trainer, self._signal = trainer, int(environment.requeue_signal or signal.SIGUSR1)
        self._previous_handler = signal.signal(self._signal, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._in_batch:
            self._pending = True
        else:
            self._save_and_requeue(signum, frame)

    def _save_and_requeue(self, signum: int, frame: Any) -> None:
        self._pending = False
        if self._in_batch_end:
            write_step_metrics_now(self._trainer)
        self._trainer._signal_connector._slurm_sigusr_handler_fn(signum, frame)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._in_batch = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._in_batch = False
        if self._pending and self._signal is not None:
            self._in_batch_end = True
            try:
                self._save_and_requeue(self._signal, None)
            finally:
                self._in_batch_end = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._signal is not None:
            import signal

            signal.signal(self._signal, self._previous_handler or signal.SIG_DFL)
            self._signal = None
