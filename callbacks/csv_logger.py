"""A CSV logger that survives resumption.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv``; :class:`ResumableCSVLogger` instead archives it
(``metrics.attempt-N.csv``), keeps its rows up to the step the run resumes from, and appends the new ones.
Every rewrite is atomic.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from retrieval.cache import write_bytes_atomically


def read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_metrics_csv(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomically(path, buffer.getvalue().encode())


def row_step(row: dict[str, str]) -> float | None:
    """The ``step`` of a metrics row, or None for a row cut short by a kill."""
    try:
        return float(row.get("step") or "")
    except ValueError:
        return None


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, minus the deletion of a previous attempt's ``metrics.csv``."""

    def __init__(self, log_dir: str, resume_step: int | None = None):
        self.resume_step = resume_step
        self._recent_rows: list[tuple] = []
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        attempt = 1 + len(list(path.parent.glob("metrics.attempt-*.csv")))
        shutil.copyfile(
            path, path.with_name(f"metrics.attempt-{attempt}.csv")
        )  # the earlier attempt, verbatim
        fieldnames, rows = read_metrics_csv(path)
        # a checkpoint at global step k holds batches 0..k-1, logged as steps 0..k-1; the resumed run logs k on
        kept = [
            r
            for r in rows
            if self.resume_step is not None and (step := row_step(r)) is not None and step < self.resume_step
        ]
        if kept:
            self.metrics_keys = sorted(fieldnames)
            write_metrics_csv(path, self.metrics_keys, kept)
        else:
            path.unlink()

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        """Record a row, minus values already recorded for the same step (see :func:`write_step_metrics_now`)."""
        fresh = dict(metrics_dict)
        for recent_step, recent in self._recent_rows:
            if recent_step == step:
                fresh = {k: v for k, v in fresh.items() if k not in recent or float(recent[k]) != float(v)}
        if not fresh:
            return
        self._recent_rows = [*self._recent_rows[-3:], (step, fresh)]
        super().log_metrics(fresh, step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = read_metrics_csv(Path(self.metrics_file_path))
        write_metrics_csv(Path(self.metrics_file_path), fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/metrics.csv`` that continues an interrupted run's file.

    Args:
        resume_step: the global step of the checkpoint being resumed (rows logged after it by the
            interrupted attempt are dropped from ``metrics.csv``, since the resumed run logs them again;
            they stay in ``metrics.attempt-N.csv``). ``None``: a fresh start.
    """

    def __init__(self, save_dir: str | Path, resume_step: int | None = None):
        super().__init__(save_dir=str(save_dir), name="", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment  # one writer: every rank archiving and rewriting metrics.csv would race
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir, resume_step=self.resume_step)
        return self._experiment


def write_step_metrics_now(trainer: Any) -> None:
    """Write the running training batch's metrics to the CSV log now, from ``on_train_batch_end``.

    Lightning logs a batch's metrics only after the ``on_train_batch_end`` hooks, which is where
    checkpoints (and the preemption save) are taken. A kill right after such a checkpoint would lose that
    batch's row for good: the resumed run starts at the next batch. Writing it before the checkpoint
    closes the gap; the identical row Lightning logs afterwards is ignored by the CSV writer.
    """
    connector = trainer._logger_connector
    if (
        connector._first_loop_iter is None
        or not connector.should_update_logs
        or trainer.fit_loop._should_accumulate()
    ):
        return
    metrics = {
        k: (v.item() if hasattr(v, "item") else v) for k, v in connector.metrics["log"].items() if k != "step"
    }
    if not metrics:
        return
    for logger in trainer.loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.log_metrics(metrics, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
            logger.save()
