"""Loggers: CSV always; W&B when configured, offline unless a W&B login is found (API key or netrc).

A resumed run keeps the CSV metrics of its earlier attempts: Lightning's ``CSVLogger`` deletes an existing
``metrics.csv``; :class:`ResumableCSVLogger` instead archives it (``metrics.attempt-N.csv``), keeps its rows
up to the step the run resumes from, and appends the new ones. Every rewrite is atomic.
"""

from __future__ import annotations

import csv
import io
import netrc
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lightning_modules.models.cache import write_bytes_atomically


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


def csv_logger(save_dir: str | Path, resume_step: int | None = None) -> CSVLogger:
    return ResumableCSVLogger(save_dir, resume_step)


WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_host(environ: Mapping[str, str]) -> str:
    """The W&B server's host name (``api.wandb.ai``, or the host of ``$WANDB_BASE_URL``)."""
    return urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"


def netrc_has_wandb_login(environ: Mapping[str, str]) -> bool:
    """``wandb login`` stores the key in ``$NETRC`` or ``~/.netrc`` under the W&B host; wandb reads it there."""
    path = Path(environ.get("NETRC") or Path(environ.get("HOME") or Path.home()) / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(wandb_host(environ))
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(mode: str, environ: Mapping[str, str] | None = None) -> str:
    """``online`` or ``offline`` for the logger's ``mode``: ``auto`` is online with a W&B login
    (``WANDB_API_KEY`` or a netrc entry from ``wandb login``) unless ``WANDB_MODE`` says offline."""
    environ = os.environ if environ is None else environ
    if mode != "auto":
        return mode
    if environ.get("WANDB_MODE") in WANDB_OFFLINE_MODES:
        return "offline"
    return "online" if environ.get("WANDB_API_KEY") or netrc_has_wandb_login(environ) else "offline"


def wandb_logger(
    save_dir: str | Path,
    run_id: str,
    project: str = "llm-supervised-retrievers",
    entity: str | None = None,
    name: str | None = None,
    mode: str = "auto",
    tags: list[str] | None = None,
) -> Logger:
    """A W&B logger whose run id is fixed by the run directory, so a requeued job continues the same run.

    Under a W&B sweep agent the trial's run id comes from ``WANDB_RUN_ID`` (set by the agent), so the
    trial's metrics reach the sweep.
    ``mode``: ``online``, ``offline``, or ``auto`` (:func:`resolve_wandb_mode`). The key is read by wandb
    from the environment or the netrc file, never stored.
    """
    from lightning.pytorch.loggers import WandbLogger

    run_id = os.environ.get("WANDB_RUN_ID") or run_id  # a sweep agent names the trial's run; keep its id
    mode = resolve_wandb_mode(mode)
    return WandbLogger(
        project=project,
        entity=entity,
        name=name or run_id,
        id=run_id,
        save_dir=str(save_dir),
        offline=(mode == "offline"),
        resume="allow",
        tags=tags,
        log_model=False,
    )


def build_loggers(
    spec: dict[str, Any], run_dir: Path, run_id: str, resume_step: int | None = None
) -> list[Logger]:
    loggers: list[Logger] = [csv_logger(run_dir, resume_step)]
    if spec.get("wandb"):
        loggers.append(wandb_logger(run_dir, run_id, **spec["wandb"]))
    return loggers
