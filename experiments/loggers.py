"""Loggers: CSV always; W&B when configured, offline when there is no API key or network.

A resumed run keeps the CSV metrics of its earlier attempts: Lightning's ``CSVLogger`` deletes an existing
``metrics.csv``; :class:`callbacks.csv_logger.ResumableCSVLogger` instead archives it (``metrics.attempt-N.csv``), keeps its rows
up to the step the run resumes from, and appends the new ones. Every rewrite is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from callbacks.csv_logger import ResumableCSVLogger


def csv_logger(save_dir: str | Path, resume_step: int | None = None) -> CSVLogger:
    return ResumableCSVLogger(save_dir, resume_step)


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
    ``mode``: ``online``, ``offline``, or ``auto`` (online only with ``WANDB_API_KEY`` set and
    ``WANDB_MODE`` not ``offline``). The key is read by wandb from the environment, never stored.
    """
    from lightning.pytorch.loggers import WandbLogger

    run_id = os.environ.get("WANDB_RUN_ID") or run_id  # a sweep agent names the trial's run; keep its id
    if mode == "auto":
        mode = (
            "online"
            if os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "offline"
            else "offline"
        )
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
