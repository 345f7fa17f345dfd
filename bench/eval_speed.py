"""Lab speed: one full-corpus retrieval evaluation of the SmolLM2 start, as the lab runs it.

``exp=dream_tiny`` (SmolLM2-135M-Instruct, mean pooling, LoRA r=8, max length 128, the module's
``eval_precision`` and ``eval_batch_size``) on the vendored HotpotQA dev split (4,858 paragraphs, 100
questions): ``trainer.validate`` with ``RetrievalEvaluation`` (the untrained-score cache off), timed wall
and CPU, with the threads asked for. A second evaluation of the unchanged model is timed too: with the
encoding cache (``retrieval/encodings.py``) it reads the corpus encodings back instead of encoding again.

``python -m bench.eval_speed --label after --threads 2`` (``make bench-eval``) merges its record under
``label`` into ``bench/results/eval_speed.json``, so a record taken at an older commit (``before``) stays
next to the new one; each record carries its commit, threads, load and the metrics, and the file states
the metric differences between the labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.json"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def timed_validate(trainer: Any, model: Any, datamodule: Any, evaluation: Any) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.validate(model, datamodule=datamodule, verbose=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cpu_share": round(cpu / (wall * torch.get_num_threads()), 3),
        "metrics": evaluation.last["metrics"],
    }


def measure(experiment: str, overrides: list[str], repeats: int) -> dict[str, Any]:
    """Wall/CPU seconds and metrics of ``repeats`` evaluations of the unchanged start model."""
    import lightning as L
    from hydra.utils import instantiate

    from bench.train_step import compose_experiment
    from callbacks.retrieval_eval import RetrievalEvaluation

    workdir = tempfile.mkdtemp(prefix="lsr-bench-eval-")
    os.environ["LSR_CACHE_DIR"] = str(Path(workdir) / "cache")  # a cold cache: nothing from earlier runs
    cfg = compose_experiment(experiment, tuple(overrides), workdir)
    L.seed_everything(cfg.seed, workers=True)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    load_s = time.perf_counter() - start
    evaluation = RetrievalEvaluation(top_k=100, cache_untrained=False, show_progress=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[evaluation],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=workdir,
    )
    runs = [timed_validate(trainer, model, datamodule, evaluation) for _ in range(repeats)]
    corpus = datamodule.load_corpus()
    return {
        "experiment": experiment,
        "overrides": overrides,
        "model_load_s": round(load_s, 1),
        "documents": len(corpus.doc_ids),
        "queries": evaluation.last["num_queries"],
        "eval_precision": getattr(model, "eval_precision", None),
        "eval_batch_size": getattr(model, "eval_batch_size", None),
        "evaluations": runs,
    }


def metric_differences(records: dict[str, Any], reference: str = "before") -> dict[str, Any]:
    """Per label, each metric's difference from the ``reference`` label's first evaluation."""
    if reference not in records:
        return {}
    base = records[reference]["evaluations"][0]["metrics"]
    out = {}
    for label, record in records.items():
        if label == reference:
            continue
        metrics = record["evaluations"][0]["metrics"]
        out[label] = {k: round(metrics[k] - base[k], 6) for k in base if k in metrics}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="record name in the results file (before/after)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experiment", default="dream_tiny")
    parser.add_argument("--repeats", type=int, default=2, help="evaluations of the same (unchanged) model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. model.eval_batch_size=64")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    record = {
        "commit": git_commit(),
        "machine": machine_info(),
        **measure(args.experiment, args.overrides, args.repeats),
    }
    record["machine_after"] = {"load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    payload = json.loads(args.out.read_text()) if args.out.exists() else {"records": {}}
    payload["records"][args.label] = record
    payload["metric_difference_vs_before"] = metric_differences(payload["records"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
