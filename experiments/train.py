"""Train one experiment: ``python -m experiments.train exp=<name> [key=value ...]`` (``make train``).

Composes the Hydra config, picks the deterministic run directory, resumes from its ``last.ckpt`` when
present, evaluates before and after training, exports the embedder and writes ``results.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from callbacks.export import ExportEmbedder, model_card
from callbacks.retrieval_eval import RetrievalEvaluation
from callbacks.step_timer import StepTimer, peak_memory_mb
from experiments import CONFIG_DIR
from experiments.loggers import build_loggers
from experiments.run_dir import check_or_store_config, run_directory
from lightning_modules.models.cache import write_json_atomically


def prepare_environment(cfg: DictConfig) -> None:
    os.environ["LSR_TINY_MODELS"] = "1" if cfg.tiny_models else "0"
    if cfg.get("offline", True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def resume_checkpoint(run_dir: Path, cfg: DictConfig) -> str | None:
    if not cfg.resume:
        return None
    hpc = sorted((run_dir).glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.split("_")[-1]))
    if hpc:
        return str(hpc[-1])
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None


def run(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; return the results dict (also written to ``results.json``)."""
    prepare_environment(cfg)
    L.seed_everything(cfg.seed, workers=True)
    run_dir = run_directory(cfg.output_root, cfg.name, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_or_store_config(run_dir, resolved)

    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    callbacks = []
    for name, spec in (cfg.callbacks or {}).items():
        if spec is None:
            continue
        kwargs = {"dirpath": str(run_dir / "checkpoints")} if name == "model_checkpoint" else {}
        callbacks.append(instantiate(spec, **kwargs))
    timer = StepTimer()
    callbacks.append(timer)
    run_id = f"{cfg.name}-{run_dir.parent.name}-{run_dir.name}"
    loggers = build_loggers(OmegaConf.to_container(cfg.logger, resolve=True) or {}, run_dir, run_id)
    trainer: L.Trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers)
    evaluation = next((c for c in callbacks if isinstance(c, RetrievalEvaluation)), None)

    ckpt_path = resume_checkpoint(run_dir, cfg)
    start = time.perf_counter()
    before = None
    if evaluation is not None and cfg.eval_before_training and ckpt_path is None:
        trainer.validate(model, datamodule=datamodule, verbose=False)
        before = evaluation.last
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    after = None
    if evaluation is not None:
        if evaluation.last is None or evaluation.last["step"] != trainer.global_step:
            trainer.validate(model, datamodule=datamodule, verbose=False)
        after = evaluation.last
    if before is None:  # resumed: the untrained score was recorded by the first attempt
        previous = run_dir / "results.json"
        if previous.exists():
            before = {"metrics": json.loads(previous.read_text()).get("metrics", {}).get("before")}

    results = {
        "experiment": cfg.name,
        **OmegaConf.to_container(cfg.meta, resolve=True),
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
        "resumed_from": ckpt_path,
    }
    if trainer.is_global_zero:
        export = next((c for c in callbacks if isinstance(c, ExportEmbedder)), None)
        if export is not None and export.path is not None:
            results["export_dir"] = str(export.path)
            (export.path / "README.md").write_text(model_card(type(model).__name__, dict(model.hparams), results["metrics"]["after"]))
        checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpoint is not None:
            results["checkpoint_dir"] = checkpoint.dirpath
        write_json_atomically(run_dir / "results.json", results)
        print_summary(results)
    return results


def print_summary(results: dict[str, Any]) -> None:
    metrics = results["metrics"]
    print("\n" + "=" * 72)
    print(f"experiment {results['experiment']}  ({results.get('method', '?')}, start {results.get('start', '?')})")
    for label in ("before", "after"):
        if metrics.get(label):
            print(f"  dev {label:6s}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics[label].items()))
    budget = results["budget"]
    sps = budget["seconds_per_step"]
    print(f"  steps {budget['steps']}, {sps:.2f} s/step, peak memory {budget['peak_memory_mb']:.0f} MB" if sps else f"  steps {budget['steps']}")
    print(f"  run dir:     {results['run_dir']}")
    print(f"  metrics:     {results['run_dir']}/eval/ and {results['run_dir']}/metrics.csv")
    if results.get("checkpoint_dir"):
        print(f"  checkpoints: {results['checkpoint_dir']}")
    if results.get("export_dir"):
        print(f"  exported:    {results['export_dir']}")
    print("=" * 72)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run(cfg, list(HydraConfig.get().overrides.task))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
