"""Loggers: CSV always; W&B when configured, offline unless a W&B login is found (API key or netrc).

A resumed run keeps the CSV metrics of its earlier attempts: Lightning's ``CSVLogger`` deletes an existing
``metrics.csv``; :class:`callbacks.csv_logger.ResumableCSVLogger` instead archives it (``metrics.attempt-N.csv``), keeps its rows
up to the step the run resumes from, and appends the new ones. Every rewrite is atomic.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger

from callbacks.csv_logger import ResumableCSVLogger


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
