"""What ``experiments.evaluate --model`` names, loaded as something mteb can encode with: an exported folder,
a run directory, a Lightning checkpoint (the module class from the run's ``config.yaml``, else from
``--exp``), or a baseline model name or folder. Nothing here imports the model stack at import time:
``experiments.evaluate`` sets the hub offline first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from experiments.cli import UsageError

EXPORT_CONFIG = "lsr_embedder.json"


class ModelSpecError(UsageError):
    """A ``--model`` that names nothing loadable; the message says what was looked for."""


# ---- finding what to load ------------------------------------------------------------------------------
def latest_run(output_root: Path, experiment: str) -> Path:
    """The most recently finished run directory of ``experiment`` under ``output_root``."""
    runs = sorted((output_root / experiment).glob("*/*/results.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ModelSpecError(
            f"no finished run of experiment '{experiment}' under {output_root} (no */*/results.json); pass --model"
        )
    return runs[-1].parent


def run_dir_of(checkpoint: Path) -> Path | None:
    """``<run>/checkpoints/x.ckpt`` → ``<run>`` when it holds the run's ``config.yaml``."""
    for candidate in (checkpoint.parent.parent, checkpoint.parent):
        if (candidate / "config.yaml").exists():
            return candidate
    return None


def module_config(checkpoint: Path, experiment: str | None) -> dict[str, Any]:
    """The resolved run config next to the checkpoint, else the composed config of ``experiment``."""
    run_dir = run_dir_of(checkpoint)
    if run_dir is not None:
        return yaml.safe_load((run_dir / "config.yaml").read_text())
    if not experiment:
        raise ModelSpecError(
            f"{checkpoint}: no config.yaml in its run directory; pass --exp so the module class is known"
        )
    from omegaconf import OmegaConf

    from experiments.config_check import compose_checked

    return OmegaConf.to_container(compose_checked([f"exp={experiment}"]), resolve=True)


def load_checkpoint(checkpoint: Path, experiment: str | None) -> tuple[Any, str, str]:
    """(module, model name, revision) from a Lightning checkpoint."""
    from hydra.utils import get_class

    from experiments.checkpoints import load_module
    from lightning_modules.checkpoint_io import read_global_step

    config = module_config(checkpoint, experiment)
    target = (config.get("model") or {}).get("_target_")
    if not target:
        raise ModelSpecError(f"{checkpoint}: the run config has no model._target_")
    module = load_module(get_class(target), checkpoint, tiny=bool(config.get("tiny_models")))
    return module, config.get("name") or checkpoint.stem, f"step-{read_global_step(checkpoint)}"


def load_export(folder: Path) -> Any:
    """An exported folder as an :class:`Embedder` with the settings it was trained with."""
    from lightning_modules.models.embedder import Embedder

    settings = json.loads((folder / EXPORT_CONFIG).read_text())
    return Embedder(
        str(folder),
        pooling=settings["pooling"],
        normalize=settings["normalize"],
        query_instruction=settings.get("query_instruction", ""),
        document_instruction=settings.get("document_instruction", ""),
        max_length=settings["max_length"],
        append_eos=settings.get("append_eos", False),
    )


def stage_attention(folder: Path) -> str:
    """The attention a pipeline stage's output was trained with (its marker file), else ``causal``."""
    from lightning_modules.models.registry import STAGE_MARKER

    marker = folder / STAGE_MARKER
    if not marker.is_file():
        return "causal"
    return json.loads(marker.read_text()).get("metrics", {}).get("attention", "causal")


def sentence_transformers_pooling(folder: Path) -> tuple[str | None, bool]:
    """(pooling, normalize) declared by a sentence-transformers folder, or (None, True) if it isn't one."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return None, True
    modules = json.loads(modules_file.read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text())
            for key, name in (
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_lasttoken", "last"),
            ):
                if config.get(key):
                    return name, normalize
    return None, normalize


def load_model(spec: str, args: argparse.Namespace) -> tuple[Any, str, str, Path | None]:
    """(model, name, revision, run directory or None) for any ``--model`` spec."""
    from lightning_modules.models.embedder import Embedder

    path = Path(spec).expanduser()
    if path.is_dir() and ((path / "results.json").exists() or (path / "config.yaml").exists()):
        run_dir = path
        if (run_dir / "export" / EXPORT_CONFIG).exists():
            config = (
                yaml.safe_load((run_dir / "config.yaml").read_text())
                if (run_dir / "config.yaml").exists()
                else {}
            )
            return load_export(run_dir / "export"), config.get("name") or run_dir.name, "export", run_dir
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise ModelSpecError(f"{run_dir}: a run directory without export/ or checkpoints/last.ckpt")
        module, name, revision = load_checkpoint(last, args.exp)
        return module, name, revision, run_dir
    if path.is_dir() and (path / EXPORT_CONFIG).exists():
        run_dir = path.parent if (path.parent / "config.yaml").exists() else None
        return load_export(path), path.parent.name if run_dir else path.name, "export", run_dir
    if path.suffix == ".ckpt":
        if not path.exists():
            raise ModelSpecError(f"checkpoint {path} does not exist")
        module, name, revision = load_checkpoint(path, args.exp)
        return module, name, revision, run_dir_of(path)
    pooling, normalize = sentence_transformers_pooling(path) if path.is_dir() else (None, True)
    embedder = Embedder(
        spec,
        pooling=args.pooling or pooling or "mean",
        normalize=normalize,
        attention=args.attention or stage_attention(path),
        max_length=args.max_length,
        query_instruction=args.query_instruction,
        document_instruction=args.document_instruction,
    )
    return embedder, path.name if path.is_dir() else spec, "baseline", None


def check_model_spec(spec: str, offline: bool) -> None:
    """Refuse a ``--model`` that cannot load before any task data or model is loaded: a missing checkpoint
    or folder, or (offline) a hub name that is not in the local cache."""
    from experiments.config_check import model_problem

    path = Path(spec).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise ModelSpecError(f"checkpoint {path} does not exist")
        return
    if path.is_dir():
        return  # a run directory, an export or a model folder: load_model tells them apart
    problem = model_problem(spec, offline=offline)
    if problem:
        raise ModelSpecError(f"--model '{spec}': {problem}")
