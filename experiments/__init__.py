"""Hydra config root (config groups + one override file per experiment under ``exp/``) and the entry point."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
