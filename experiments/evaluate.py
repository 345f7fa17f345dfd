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
a run, else ``<output root>/eval/<model name>``), keyed by data set: evaluating the same model on another
data set adds its scores and keeps the others. Hub downloads are off (``HF_HUB_OFFLINE=1`` unless the
environment says otherwise) before any hub library loads; mistakes print one ``error:`` line, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from experiments.cli import ArgumentParser, UsageError, go_offline, run_command
from experiments.eval_models import check_model_spec, latest_run

SETTINGS = ("name", "revision", "precision", "title_separator", "max_length")  # must match to merge


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def evaluate(args: Any) -> dict[str, Any]:
    go_offline()  # before the imports below load huggingface_hub
    output_root = Path(args.output_root)
    spec = args.model or str(latest_run(output_root, args.exp))
    check_model_spec(spec, offline=os.environ.get("HF_HUB_OFFLINE", "1") != "0")  # before the slow imports
    from callbacks.mteb_eval import DEFAULT_METRICS, run_mteb
    from datamodules.mteb_tasks import preload, resolve_tasks, split_specs
    from experiments.eval_models import load_model
    from lightning_modules.mteb_encoder import MTEBEncoder

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
    results = {
        "model": spec,
        "name": name,
        "revision": revision,
        "precision": args.precision,
        "title_separator": args.title_separator,
        "max_length": encoder.embedder.max_length if encoder.embedder is not None else None,
        "tasks": scores,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = (
        Path(args.output)
        if args.output
        else (run_dir / "mteb_eval" if run_dir else output_root / "eval" / slug(name))
    )
    return write_results(out, results)


def merged_results(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` merged into the results already in ``path``, keyed by data set: the scores of other data
    sets are kept, a data set evaluated again is replaced. Refused when the kept scores were computed
    with other settings (another checkpoint, precision, document text or length)."""
    from callbacks.mteb_eval import mean_main_score

    old = json.loads(path.read_text()) if path.exists() else {}
    kept = {task: entry for task, entry in old.get("tasks", {}).items() if task not in new["tasks"]}
    if kept:
        differing = [key for key in SETTINGS if old.get(key) != new.get(key)]
        if differing:
            raise UsageError(
                f"{path} holds {', '.join(kept)} evaluated with "
                + ", ".join(f"{key}={old.get(key)!r}" for key in differing)
                + "; this evaluation has "
                + ", ".join(f"{key}={new.get(key)!r}" for key in differing)
                + ". Pass --output <folder> to keep both"
            )
    tasks = {**kept, **new["tasks"]}
    seconds = round(new["seconds"] + (old.get("seconds", 0.0) if kept else 0.0), 1)
    return {**new, "tasks": tasks, "mean": mean_main_score(tasks), "seconds": seconds}


def write_results(out: Path, new: dict[str, Any]) -> dict[str, Any]:
    """``mteb_results.json`` (merged by data set) and its table ``mteb_results.md`` in ``out``."""
    from callbacks.mteb_eval import format_table
    from retrieval.cache import write_json_atomically

    results = merged_results(out / "mteb_results.json", new)
    write_json_atomically(out / "mteb_results.json", results)
    header = f"# MTEB: {results['name']} ({results['revision']}, {results['precision']})\n\n"
    table = format_table(results["tasks"])
    (out / "mteb_results.md").write_text(
        header + table + f"\nmean main score {results['mean']:.4f}; {results['seconds']} s\n"
    )
    print(header + format_table(new["tasks"]))
    print(f"wrote {out / 'mteb_results.json'} and {out / 'mteb_results.md'}")
    return results


def parse_args(argv: list[str]) -> Any:
    parser = ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n")[0])
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


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda arguments: evaluate(parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
