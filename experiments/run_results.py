"""Step 3 of a training run (experiments/train.py): ``<run>/results.json`` and the summary on stdout.

``results.json`` holds what the experiment declares (``meta``: method, start, candidates, label use), the
budget (steps, seconds per step, peak memory), the dev metrics before and after training, where it
resumed from, the stages it used (a stage that uses labels leads ``label_use``), and what callbacks contribute (``callbacks/results.py``: Rabtriever's reranking, the export
folder). Callbacks that describe the finished run (the export's model card) are handed the results once.
Under ``debug=tiny`` the ``start`` names the tiny stand-ins that actually ran.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from callbacks.results import ContributesResults, NeedsResults
from callbacks.step_timer import StepTimer, peak_memory_mb
from experiments.report_rows import eval_dataset_name, evaluation_history
from experiments.run_dir import candidates_of, label_use_of
from experiments.run_fit import FitOutcome
from experiments.run_prepare import PreparedRun
from lightning_modules.models.registry import is_stage_output, tiny_family_for
from retrieval.cache import write_json_atomically


def write_results(run: PreparedRun, outcome: FitOutcome) -> dict[str, Any]:
    """The results dict, written to ``<run>/results.json`` and summarised on stdout (rank 0)."""
    trainer, callbacks = outcome.trainer, outcome.trainer.callbacks
    results = {
        "experiment": run.cfg.name,
        **declared(run.cfg),
        "run_dir": str(run.run_dir),
        "budget": budget(run, outcome),
        "metrics": {"before": outcome.before, "after": outcome.after},
        "eval_set": eval_dataset_name(run.run_dir, None),
        "eval_history": evaluation_history(
            run.run_dir
        ),  # the nDCG@10 curve, for a report without the run dir
        "resumed_from": run.resume_from,
        "resumed_at_step": run.resume_step,
    }
    results.update(outcome.stages.results_fields(results))
    for callback in callbacks:
        if isinstance(callback, ContributesResults):
            results.update(callback.results_summary())
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is not None:
        results["checkpoint_dir"] = checkpoint.dirpath
    if trainer.is_global_zero:
        for callback in callbacks:
            if isinstance(callback, NeedsResults):
                callback.on_results(trainer, outcome.model, results)
        write_json_atomically(run.run_dir / "results.json", results)
        print_summary(results)
    return results


def declared(cfg: DictConfig) -> dict[str, Any]:
    """``meta`` as the experiment states it, with the label use the run's data settings imply and, under
    ``debug=tiny``, the start that ran."""
    meta = OmegaConf.to_container(cfg.meta, resolve=True)
    data, model = (
        OmegaConf.to_container(cfg.data, resolve=True),
        OmegaConf.to_container(cfg.model, resolve=True),
    )
    if "label_use" in meta:
        meta["label_use"] = label_use_of(str(meta["label_use"]), {"data": data, "model": model})
    if "candidates" in meta:
        meta["candidates"] = candidates_of(str(meta["candidates"]), model)
    if cfg.tiny_models and "start" in meta:
        meta["start"] = f"{tiny_models_of(cfg.model)} (debug=tiny stand-ins for: {meta['start']})"
    return meta


def tiny_models_of(model: DictConfig) -> str:
    """``tiny-llama, tiny-bert``: the tiny model each ``name_or_path`` of the model config becomes (a stage
    output is used as it is: it was built from tiny models)."""
    names = []
    for block in model.values():
        if isinstance(block, DictConfig) and isinstance(block.get("name_or_path"), str):
            name = block.name_or_path
            tiny = f"stage output {name}" if is_stage_output(name) else f"tiny-{tiny_family_for(name)}"
            names += [tiny] if tiny not in names else []
    return ", ".join(names) or "tiny models"


def budget(run: PreparedRun, outcome: FitOutcome) -> dict[str, Any]:
    timer = next((c for c in outcome.trainer.callbacks if isinstance(c, StepTimer)), None)
    return {
        "max_steps": run.cfg.trainer.get("max_steps"),
        "steps": outcome.trainer.global_step,
        "train_seconds": round(timer.seconds, 2) if timer else None,
        "seconds_per_step": timer.seconds_per_step if timer else None,
        "wall_seconds": round(outcome.seconds, 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }


def print_summary(results: dict[str, Any]) -> None:
    metrics, budget_ = results["metrics"], results["budget"]
    lines = [
        "=" * 72,
        f"experiment {results['experiment']}  ({results.get('method', '?')}, start {results.get('start', '?')})",
        *(
            f"  dev {label:6s}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics[label].items())
            for label in ("before", "after")
            if metrics.get(label)
        ),
        f"  steps {budget_['steps']}, {budget_['seconds_per_step']:.2f} s/step, "
        f"peak memory {budget_['peak_memory_mb']:.0f} MB"
        if budget_["seconds_per_step"]
        else f"  steps {budget_['steps']}",
        f"  run dir:     {results['run_dir']}",
        f"  metrics:     {results['run_dir']}/eval/ and {results['run_dir']}/metrics.csv",
        *([f"  checkpoints: {results['checkpoint_dir']}"] if results.get("checkpoint_dir") else []),
        *([f"  exported:    {results['export_dir']}"] if results.get("export_dir") else []),
        "=" * 72,
    ]
    print("\n" + "\n".join(lines))
