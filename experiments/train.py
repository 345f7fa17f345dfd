"""Train one experiment: ``python -m experiments.train exp=<name> [key=value ...]`` (``make train``).

Composes and checks the Hydra config (unknown keys, bad combinations and missing model files are refused
with the valid choices), picks the deterministic run directory, resumes from its newest loadable checkpoint
(``last.ckpt`` or a SLURM ``hpc_ckpt_N.ckpt``) when present, evaluates before and after training, exports
the embedder and writes ``results.json``. Checkpoints are written atomically and loaded weights-only.
See docs/reliability.md for every fault and what the user sees.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from callbacks.export import ExportEmbedder, last_mteb_record, model_card
from callbacks.resume import PreemptionAtBatchEnd, RandomStateCheckpoint
from callbacks.retrieval_eval import RetrievalEvaluation
from callbacks.step_timer import StepTimer, peak_memory_mb
from datamodules.errors import DataFormatError, MTEBTaskUnavailableError
from experiments import CONFIG_DIR
from experiments.config_check import ConfigError, check_config, compose_checked
from experiments.loggers import build_loggers
from experiments.report_rows import eval_dataset_name, evaluation_history
from experiments.run_dir import (
    ConfigMismatchError,
    check_no_secrets,
    check_or_store_config,
    label_use_of,
    run_directory,
)
from experiments.stage_runner import run_stages
from lightning_modules.base import NonFiniteLossError
from lightning_modules.checkpoint_io import (
    AtomicCheckpointIO,
    read_global_step,
    sharded_checkpoint_candidates,
)
from lightning_modules.models.registry import ModelNotFoundError
from retrieval.cache import write_json_atomically

# errors caused by the user's input: printed as one clear message (no traceback), exit status 2
USER_ERRORS = (
    ConfigError,
    ConfigMismatchError,
    DataFormatError,
    ModelNotFoundError,
    NonFiniteLossError,
    MTEBTaskUnavailableError,
)


def prepare_environment(cfg: DictConfig) -> None:
    os.environ["LSR_TINY_MODELS"] = "1" if cfg.tiny_models else "0"
    if cfg.get("offline", True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """``checkpoints/last.ckpt`` and SLURM's ``hpc_ckpt_N.ckpt`` (Lightning writes those to the run dir);
    files, or folders for sharded FSDP checkpoints (with the complete folders a kill during a sharded
    publish may have left next to them)."""
    named = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    return [p for p in named if p.exists()] + [c for p in named for c in sharded_checkpoint_candidates(p)]


def resume_checkpoint(run_dir: Path, cfg: DictConfig) -> tuple[str, int] | None:
    """The loadable checkpoint with the highest global step, as ``(path, step)``; None: start fresh.

    An unreadable checkpoint (e.g. truncated by a tool that does not write atomically) is skipped with a
    warning in favour of the next newest one; if every candidate is unreadable the run stops rather than
    silently starting over.
    """
    if not cfg.resume:
        return None
    readable, broken = [], []
    for path in checkpoint_candidates(run_dir):
        try:
            readable.append((read_global_step(path), path.name.startswith("hpc_"), path))
        except Exception as err:  # torch raises several types for a damaged zip
            broken.append(f"{path} ({type(err).__name__}: {str(err)[:120]})")
            print(f"warning: skipping unreadable checkpoint {broken[-1]}", file=sys.stderr)
    if not readable:
        if broken:
            raise ConfigError(
                "every checkpoint in the run directory is unreadable: "
                + "; ".join(broken)
                + ". Move them away to start over, or set resume=false."
            )
        return None
    step, _, path = max(readable)  # newest step; on a tie the HPC checkpoint (written at preemption)
    return str(path), step


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list) -> L.Trainer:
    """The configured Trainer plus an atomic, weights-only checkpoint IO (unless the config brings one)."""
    plugins = list(instantiate(cfg.trainer.plugins)) if cfg.trainer.get("plugins") else []
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return instantiate(
        cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers, plugins=plugins
    )


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    callbacks: list[L.Callback] = []
    for spec in (cfg.callbacks or {}).values():
        if spec is None:
            continue
        target = hydra.utils.get_class(spec._target_) if "_target_" in spec else None
        is_checkpoint = isinstance(target, type) and issubclass(target, ModelCheckpoint)
        kwargs = (
            {"dirpath": str(run_dir / "checkpoints")} if is_checkpoint and spec.get("dirpath") is None else {}
        )
        callbacks.append(instantiate(spec, **kwargs))
    callbacks.append(RandomStateCheckpoint())  # dropout masks after a resume equal an uninterrupted run's
    callbacks.append(PreemptionAtBatchEnd())  # SLURM requeue: the HPC checkpoint is taken between batches
    return callbacks


def untrained_metrics_on_disk(run_dir: Path) -> dict[str, Any] | None:
    """The step-0 evaluation an interrupted first attempt wrote (results.json, else eval/step_000000.json)."""
    previous = run_dir / "results.json"
    if previous.exists():
        before = json.loads(previous.read_text()).get("metrics", {}).get("before")
        if before:
            return before
    step0 = run_dir / "eval" / "step_000000.json"
    return json.loads(step0.read_text()).get("metrics") if step0.exists() else None


def run(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; return the results dict (also written to ``results.json``)."""
    check_config(cfg)
    prepare_environment(cfg)
    L.seed_everything(cfg.seed, workers=True)
    run_dir = run_directory(cfg.output_root, cfg.name, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_no_secrets(resolved)
    check_or_store_config(run_dir, resolved)
    resume = resume_checkpoint(run_dir, cfg)
    ckpt_path, resume_step = resume if resume else (None, None)
    stages = run_stages(cfg)  # a paper's earlier stages, built once and cached (experiments/stage_runner.py)

    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    callbacks = build_callbacks(cfg, run_dir)
    timer = StepTimer()
    callbacks.append(timer)
    run_id = f"{cfg.name}-{run_dir.parent.name}-{run_dir.name}"
    loggers = build_loggers(
        OmegaConf.to_container(cfg.logger, resolve=True) or {}, run_dir, run_id, resume_step
    )
    trainer = build_trainer(cfg, run_dir, callbacks, loggers)
    evaluation = next((c for c in callbacks if isinstance(c, RetrievalEvaluation)), None)

    start = time.perf_counter()
    before = None
    if evaluation is not None and cfg.eval_before_training and ckpt_path is None:
        trainer.validate(model, datamodule=datamodule, verbose=False)
        before = evaluation.last
    if ckpt_path is not None:
        print(f"resuming from {ckpt_path} (step {resume_step})", file=sys.stderr)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    after = None
    if evaluation is not None:
        if evaluation.last is None or evaluation.last["step"] != trainer.global_step:
            trainer.validate(model, datamodule=datamodule, verbose=False)
        after = evaluation.last
    if before is None and ckpt_path is not None:
        # resumed: the untrained score was recorded by the first attempt
        stored = untrained_metrics_on_disk(run_dir)
        before = {"metrics": stored} if stored else None
    if trainer.is_global_zero:
        for stale in run_dir.glob("hpc_ckpt_*.ckpt"):  # superseded by checkpoints/last.ckpt at the final step
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)

    meta = OmegaConf.to_container(cfg.meta, resolve=True)
    if "label_use" in meta:
        meta["label_use"] = label_use_of(
            str(meta["label_use"]), {"data": OmegaConf.to_container(cfg.data, resolve=True)}
        )
    results = {
        "experiment": cfg.name,
        **meta,
        "run_dir": str(run_dir),
        "budget": {
            "max_steps": cfg.trainer.get("max_steps"),
            "steps": trainer.global_step,
            "train_seconds": round(timer.seconds, 2),
            "seconds_per_step": timer.seconds_per_step,
            "wall_seconds": round(time.perf_counter() - start, 2),
            "peak_memory_mb": round(peak_memory_mb(), 1),
        },
        "metrics": {
            "before": before["metrics"] if before else None,
            "after": after["metrics"] if after else None,
        },
        "eval_set": eval_dataset_name(run_dir, (after or {}).get("split")),
        "eval_history": evaluation_history(run_dir),  # the nDCG@10 curve, for a report without the run dir
        "resumed_from": ckpt_path,
        "resumed_at_step": resume_step,
    }
    results.update(stages.results_fields(results))
    for callback in callbacks:  # extra measurements of a method's own callbacks (e.g. Rabtriever's reranking)
        if hasattr(callback, "results_summary"):
            results.update(callback.results_summary())
    if trainer.is_global_zero:
        export = next((c for c in callbacks if isinstance(c, ExportEmbedder)), None)
        if export is not None and export.path is not None:
            results["export_dir"] = str(export.path)
            (export.path / "README.md").write_text(
                model_card(
                    type(model).__name__,
                    dict(model.hparams),
                    results["metrics"]["after"],
                    results=results,
                    config=resolved,
                    mteb=last_mteb_record(run_dir),
                )
            )
        checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is not None:
            results["checkpoint_dir"] = checkpoint.dirpath
        write_json_atomically(run_dir / "results.json", results)
        print_summary(results)
    return results


def print_summary(results: dict[str, Any]) -> None:
    metrics = results["metrics"]
    print("\n" + "=" * 72)
    print(
        f"experiment {results['experiment']}  ({results.get('method', '?')}, start {results.get('start', '?')})"
    )
    for label in ("before", "after"):
        if metrics.get(label):
            print(f"  dev {label:6s}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics[label].items()))
    budget = results["budget"]
    sps = budget["seconds_per_step"]
    print(
        f"  steps {budget['steps']}, {sps:.2f} s/step, peak memory {budget['peak_memory_mb']:.0f} MB"
        if sps
        else f"  steps {budget['steps']}"
    )
    print(f"  run dir:     {results['run_dir']}")
    print(f"  metrics:     {results['run_dir']}/eval/ and {results['run_dir']}/metrics.csv")
    if results.get("checkpoint_dir"):
        print(f"  checkpoints: {results['checkpoint_dir']}")
    if results.get("export_dir"):
        print(f"  exported:    {results['export_dir']}")
    print("=" * 72)


def fail(err: BaseException) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run(cfg, list(HydraConfig.get().overrides.task))
    except USER_ERRORS as err:
        fail(err)


def main() -> None:
    arguments = sys.argv[1:]
    if not any(a.startswith("-") for a in arguments):  # plain runs: compose once first for clear key errors
        try:
            compose_checked(arguments)
        except ConfigError as err:
            fail(err)
    _hydra_main()


if __name__ == "__main__":
    main()
