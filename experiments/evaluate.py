"""Evaluate an embedder with mteb, offline: ``python -m experiments.evaluate --model X --tasks T1,T2`` (``make eval``).

``--model`` may be
- an exported folder (``<run>/export``, written by ``callbacks.export``),
- a run directory (its ``export/`` when present, else ``checkpoints/last.ckpt``),
- a Lightning checkpoint (``.ckpt``; the module class comes from the run's ``config.yaml``, else from
  composing ``--exp``),
- a baseline model name or folder (``all-minilm-l6-v2``, ``smollm2-135m-instruct``, a hub name, a HF or
  sentence-transformers folder), embedded with ``--pooling`` / ``--max-length`` / ``--attention``; a
  pipeline stage's output (e.g. LLM2Vec-Gen's built teacher) is read with the attention it was built for.

Tasks are specs of :mod:`datamodules.mteb_tasks` (``hotpotqa@dev``, ``/tmp/scifact@test``, ``NanoBEIR``).
Writes ``mteb_results.json`` and ``mteb_results.md`` into ``--output`` (default: ``<run>/mteb_eval`` for
a run, else ``<output root>/eval/<model name>``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from callbacks.mteb_eval import DEFAULT_METRICS, format_table, mean_main_score, run_mteb
from retrieval.cache import write_json_atomically

EXPORT_CONFIG = "lsr_embedder.json"


class ModelSpecError(ValueError):
    pass


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
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"exp={experiment}"])
    return OmegaConf.to_container(cfg, resolve=True)


def load_checkpoint(checkpoint: Path, experiment: str | None) -> tuple[Any, str, str]:
    """(module, model name, revision) from a Lightning checkpoint."""
    import torch
    from hydra.utils import get_class

    config = module_config(checkpoint, experiment)
    target = (config.get("model") or {}).get("_target_")
    if not target:
        raise ModelSpecError(f"{checkpoint}: the run config has no model._target_")
    os.environ["LSR_TINY_MODELS"] = "1" if config.get("tiny_models") else "0"
    module = get_class(target).load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    module.eval()
    step = torch.load(str(checkpoint), map_location="cpu", weights_only=False).get("global_step", "?")
    return module, config.get("name") or checkpoint.stem, f"step-{step}"


def load_export(folder: Path) -> Any:
    """An exported folder as an :class:`Embedder` with the settings it was trained with."""
    from lightning_modules.models.embedder import Embedder

    settings = json.loads((folder / EXPORT_CONFIG).read_text())
    os.environ["LSR_TINY_MODELS"] = "0"  # the folder holds the real (possibly tiny) weights already
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


# ---- main ------------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from datamodules.mteb_tasks import preload, resolve_tasks, split_specs
    from lightning_modules.mteb_encoder import MTEBEncoder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    output_root = Path(args.output_root)
    spec = args.model or str(latest_run(output_root, args.exp))
    tasks = resolve_tasks(split_specs(args.tasks), max_queries=args.max_queries)
    preload(tasks)
    model, name, revision, run_dir = load_model(spec, args)
    encoder = MTEBEncoder(
        model,
        name=name,
        revision=revision,
        batch_size=args.batch_size,
        precision=args.precision,
        title_separator=args.title_separator,
        show_progress=args.progress,
    )
    start = time.perf_counter()
    scores = run_mteb(encoder, tasks, DEFAULT_METRICS, args.batch_size)
    seconds = round(time.perf_counter() - start, 1)
    results = {
        "model": spec,
        "name": name,
        "revision": revision,
        "precision": args.precision,
        "title_separator": args.title_separator,
        "max_length": encoder.embedder.max_length if encoder.embedder is not None else None,
        "tasks": scores,
        "mean": mean_main_score(scores),
        "seconds": seconds,
    }
    out = (
        Path(args.output)
        if args.output
        else (run_dir / "mteb_eval" if run_dir else output_root / "eval" / slug(name))
    )
    write_json_atomically(out / "mteb_results.json", results)
    header = f"# MTEB: {name} ({revision}, {args.precision})\n\n"
    (out / "mteb_results.md").write_text(
        header + format_table(scores) + f"\nmean main score {results['mean']:.4f}; {seconds} s\n"
    )
    print(header + format_table(scores))
    print(f"wrote {out / 'mteb_results.json'} and {out / 'mteb_results.md'}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=None,
        help="export folder, run dir, .ckpt, or model name (default: the latest run of --exp)",
    )
    parser.add_argument(
        "--exp", default=None, help="experiment name (module class for a bare checkpoint; latest run)"
    )
    parser.add_argument(
        "--tasks", default="hotpotqa@dev", help="comma-separated task specs (default: hotpotqa@dev)"
    )
    parser.add_argument("--output", default=None, help="output folder")
    parser.add_argument("--output-root", default=os.environ.get("LSR_OUTPUT_ROOT", "runs"))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument(
        "--title-separator",
        default=" ",
        help="document = title + SEP + text (' ': mteb; ': ': training eval)",
    )
    parser.add_argument(
        "--pooling", default=None, choices=["cls", "mean", "last"], help="baseline models: pooling"
    )
    parser.add_argument("--max-length", type=int, default=256, help="baseline models: max tokens")
    parser.add_argument(
        "--attention",
        default=None,
        choices=["causal", "bidirectional"],
        help="baseline models: attention (default: a stage output's own, else causal)",
    )
    parser.add_argument("--query-instruction", default="", help="baseline models: query prefix")
    parser.add_argument("--document-instruction", default="", help="baseline models: document prefix")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show encoding progress bars")
    args = parser.parse_args(argv)
    if not args.model and not args.exp:
        parser.error(
            "pass --model (export folder, run dir, checkpoint or model name) or --exp (its latest run)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    evaluate(parse_args(argv))


if __name__ == "__main__":
    main()
