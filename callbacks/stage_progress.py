"""Progress and loss record of a pipeline stage's training (experiments/stage_runner.py): a line every
``every`` steps, and a summary (first / last losses, seconds per step) stored in the stage's marker file."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import lightning as L

WINDOW = 10  # steps averaged for the first / last loss


class StageProgress(L.Callback):
    """Records each training step's loss and duration; prints ``stage <name>: step i/n loss … s/step``."""

    def __init__(self, name: str, total_steps: int, every: int = 10):
        self.name, self.total_steps, self.every = name, total_steps, max(int(every), 1)
        self.losses: list[float] = []
        self.durations: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is not None:
            self.durations.append(time.perf_counter() - self._start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        step = len(self.losses)
        if step % self.every == 0 or step == self.total_steps:
            recent = statistics.fmean(self.losses[-self.every :])
            print(
                f"stage {self.name}: step {step}/{self.total_steps} loss {recent:.4f} "
                f"({self.seconds_per_step():.2f} s/step)",
                file=sys.stderr,
                flush=True,
            )

    def seconds_per_step(self) -> float:
        """Median step time, the first step (allocation, lazy initialisation) left out when there are more."""
        timed = self.durations[1:] if len(self.durations) > 1 else self.durations
        return statistics.median(timed) if timed else 0.0

    def summary(self) -> dict[str, Any]:
        if not self.losses:
            return {"steps": 0}
        return {
            "steps": len(self.losses),
            "first_loss": round(statistics.fmean(self.losses[:WINDOW]), 5),
            "last_loss": round(statistics.fmean(self.losses[-WINDOW:]), 5),
            "seconds_per_step": round(self.seconds_per_step(), 4),
            "train_seconds": round(sum(self.durations), 2),
        }
