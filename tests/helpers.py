"""Shared test helpers: compose the real Hydra config and run an experiment in a temp output root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments import CONFIG_DIR


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "exp").glob("*.yaml"))


def run_experiment(overrides: list[str], output_root: Path) -> dict[str, Any]:
    from experiments.train import train

    overrides = [*overrides, f"output_root={output_root}"]
    return train(compose_config(overrides), overrides)


def llm_embedder_tiny_overrides(experiment: str, train: bool = False) -> list[str]:
    """Overrides that run an LLM-Embedder experiment on tiny models in seconds: 4 qa questions, teacher texts
    truncated; with ``train`` also 2 steps of 2 queries, CSV logging and fp32 evaluation."""
    overrides = [
        f"exp={experiment}",
        "debug=tiny",
        "data.tasks.qa.max_queries=4",
        "model.teacher.key_max_tokens=24",
        "model.teacher.output_max_tokens=8",
        "model.teacher.show_progress=false",
    ]
    if train:
        overrides += [
            "trainer.max_steps=2",
            "data.batch_size=2",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "model.eval_precision=fp32",
        ]
    return overrides


QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def quiet_trainer(root: Path, max_steps: int = 1, **kwargs: Any) -> Any:
    """A CPU Lightning Trainer without logging, checkpoint callbacks, progress bars or validation."""
    import lightning as L

    where = {"accelerator": "cpu", "limit_val_batches": 0, "default_root_dir": str(root)}
    return L.Trainer(max_steps=max_steps, **where, **QUIET, **kwargs)
