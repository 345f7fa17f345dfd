"""Hydra config root (config groups + one override file per experiment under ``exp/``) and the entry point."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

# registers the ${stage:<name>} interpolation (experiments/stage_runner.py) wherever configs are composed
from experiments import stage_runner as _stage_runner  # noqa: E402,F401
