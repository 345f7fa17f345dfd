"""Step 2 of a training run (experiments/train.py): build the paper's earlier stages (cached), then
everything from the config; evaluate before training, train, evaluate after.

The model, the callbacks (``cfg.callbacks``: every one is in the config, the resume and random-state
checkpoints and the step timer included), the loggers and the trainer (its plugins, e.g. the atomic
checkpoint IO, are in ``cfg.trainer.plugins``) are built first; the run directory and its
``config.yaml`` appear only once they are. A signal during training ends in :class:`RunInterrupted` with
the command that resumes.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from callbacks.resume import TrainingStopped
from callbacks.retrieval_eval import RetrievalEvaluation
from experiments.cli import RunInterrupted
from experiments.loggers import build_loggers
from experiments.run_dir import check_or_store_config
from experiments.run_prepare import PreparedRun
from experiments.stage_runner import StageReport, run_stages

# Lightning warns on every mid-epoch resume because the position lives in the data module's state, not
# in the DataLoader; the data modules restore it exactly (docs/reliability.md), so the warning misleads.
LIGHTNING_NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"


@dataclass
class FitOutcome:
    model: L.LightningModule
    trainer: L.Trainer
    before: dict[str, Any] | None  # dev metrics of the untrained model
    after: dict[str, Any] | None  # dev metrics after training
    seconds: float
    stages: StageReport  # the paper's earlier stages this run used (built or reused)


def fit_and_evaluate(run: PreparedRun) -> FitOutcome:
    """Build, evaluate the untrained model, train (resuming when a checkpoint was found), evaluate."""
    start = time.perf_counter()
    stages = run_stages(
        run.cfg
    )  # a paper's earlier stages, built once and cached (experiments/stage_runner.py)
    model = instantiate(run.cfg.model, _convert_="all")
    callbacks = [instantiate(spec) for spec in (run.cfg.callbacks or {}).values() if spec is not None]
    loggers = build_loggers(
        OmegaConf.to_container(run.cfg.logger, resolve=True) or {}, run.run_dir, run.run_id, run.resume_step
    )
    trainer = instantiate(
        run.cfg.trainer, default_root_dir=str(run.run_dir), callbacks=callbacks, logger=loggers
    )
    check_or_store_config(run.run_dir, run.config)
    evaluation = next((c for c in callbacks if isinstance(c, RetrievalEvaluation)), None)
    before = evaluate_untrained(run, trainer, model, evaluation)
    train(run, trainer, model)
    after = evaluate_trained(run, trainer, model, evaluation)
    if trainer.is_global_zero:
        for stale in run.run_dir.glob("hpc_ckpt_*.ckpt"):  # superseded by last.ckpt at the final step
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    return FitOutcome(model, trainer, before, after, time.perf_counter() - start, stages)


def evaluate_untrained(
    run: PreparedRun, trainer: L.Trainer, model: L.LightningModule, evaluation: RetrievalEvaluation | None
) -> dict[str, Any] | None:
    """The untrained model's dev metrics; a resumed run reads those its first attempt recorded."""
    if run.resume_from is not None:
        return stored_metrics(run.run_dir, 0)
    if evaluation is None or not run.cfg.eval_before_training:
        return None
    trainer.validate(model, datamodule=run.datamodule, verbose=False)
    return evaluation.last["metrics"] if evaluation.last else None


def train(run: PreparedRun, trainer: L.Trainer, model: L.LightningModule) -> None:
    """``trainer.fit``, resuming from the prepared checkpoint; a stop signal becomes :class:`RunInterrupted`."""
    exact = restores_data_order(run)
    if run.resume_from is not None:
        where = "; the data order continues where it stopped" if exact else ""
        print(f"resuming from {run.resume_from} (step {run.resume_step}){where}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            if exact:
                warnings.filterwarnings("ignore", message=LIGHTNING_NOT_RESUMABLE)
            trainer.fit(model, datamodule=run.datamodule, ckpt_path=run.resume_from, weights_only=True)
    except TrainingStopped as stop:
        raise RunInterrupted(stop.signum, interrupted_message(run, stop)) from None


def restores_data_order(run: PreparedRun) -> bool:
    """Whether the resume checkpoint holds the data module's position in the epoch (then Lightning's
    "dataloader not resumable" warning is wrong and is replaced by a line saying the order continues)."""
    if run.resume_from is None or Path(run.resume_from).is_dir():
        return False
    stored = torch.load(run.resume_from, map_location="cpu", weights_only=True, mmap=True)
    return "batches_done" in (stored.get(type(run.datamodule).__qualname__) or {})


def evaluate_trained(
    run: PreparedRun, trainer: L.Trainer, model: L.LightningModule, evaluation: RetrievalEvaluation | None
) -> dict[str, Any] | None:
    """The dev metrics at the final step: from training's last evaluation (unless it searched the training
    sub-corpus), from disk when a finished run is re-run (evaluated and logged already: not again), else by
    evaluating now (the whole corpus)."""
    if evaluation is None:
        return None
    last = evaluation.last
    if (
        last is not None
        and last["step"] == trainer.global_step
        and last.get("corpus") != "training subsample"
    ):
        return last["metrics"]
    if run.resume_step == trainer.global_step:
        stored = stored_metrics(run.run_dir, trainer.global_step)
        if stored is not None:
            return stored
    trainer.validate(model, datamodule=run.datamodule, verbose=False)
    return evaluation.last["metrics"] if evaluation.last else None


def stored_metrics(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The dev metrics an earlier attempt wrote for ``step`` (``eval/step_<N>.json``; for step 0 also the
    ``before`` of an earlier ``results.json``)."""
    if step == 0 and (run_dir / "results.json").exists():
        before = json.loads((run_dir / "results.json").read_text()).get("metrics", {}).get("before")
        if before:
            return before
    record = run_dir / "eval" / f"step_{step:06d}.json"
    return json.loads(record.read_text()).get("metrics") if record.exists() else None


def interrupted_message(run: PreparedRun, stop: TrainingStopped) -> str:
    command = shlex.join([sys.executable, "-m", "experiments.train", *run.overrides])
    return (
        f"interrupted ({signal.Signals(stop.signum).name}) after step {stop.step}: "
        f"{stop.checkpoint or run.run_dir / 'checkpoints' / 'last.ckpt'} holds it.\n"
        f"Resume with the same command:\n  cd {shlex.quote(str(Path.cwd()))} && {command}"
    )
