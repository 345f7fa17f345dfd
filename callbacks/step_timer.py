"""Measures training seconds per step (evaluation excluded) and the process's peak memory."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L


def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.steps += 1
            pl_module.log("train/seconds_per_step", self.seconds / self.steps)

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None
