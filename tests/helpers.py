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
    from experiments.train import run

    overrides = [*overrides, f"output_root={output_root}"]
    return run(compose_config(overrides), overrides)
