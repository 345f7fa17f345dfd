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


def encode_paths(texts: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """SmolLM2 + LoRA r=8 (dream_tiny's embedder) bf16 encoding of ``texts`` HotpotQA paragraphs, interleaved:
    e6e78c3's path (a bf16 copy of every parameter through ``functional_call``, the LoRA branches run) against
    today's (LoRA merged into the bf16 base weights, adapters off). The ratio shares the machine's load."""
    from torch.func import functional_call

    from bench.encode import corpus_texts, min_cosine
    from bench.timing import time_interleaved
    from lightning_modules.models.embedder import Embedder

    sample, _ = corpus_texts(Path(__file__).resolve().parents[1] / "datamodules" / "data" / "hotpotqa", texts)
    torch.manual_seed(0)
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
    embedder = Embedder("smollm2-135m-instruct", pooling="mean", max_length=128, lora=lora)
    for name, parameter in embedder.named_parameters():  # a trained adapter: B ≠ 0
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    embedder.eval()
    sample.sort(
        key=lambda text: -len(embedder.text_tokenizer.token_ids([text], "document")[0])
    )  # both: sorted
    outputs: dict[str, torch.Tensor] = {}

    def before() -> None:
        weights = embedder.parameters_as(torch.bfloat16)
        with torch.no_grad():
            rows = []
            for start in range(0, len(sample), batch_size):
                tokens = embedder.tokenize(sample[start : start + batch_size], "document")
                rows.append(functional_call(embedder, weights, kwargs=tokens).float())
        outputs["before"] = torch.cat(rows)

    def after() -> None:
        outputs["after"] = embedder.encode(sample, "document", batch_size=batch_size, precision="bf16")

    def fp32() -> None:
        outputs["fp32"] = embedder.encode(sample, "document", batch_size=batch_size, precision="fp32")

    fp32()
    timings = time_interleaved({"before": before, "after": after}, repeats=repeats, warmup=1)
    return {
        "texts": len(sample),
        "batch_size": batch_size,
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "speedup": round(timings["before"].median_s / timings["after"].median_s, 2),
        "min_cosine_vs_fp32": {
            name: min_cosine(outputs[name], outputs["fp32"]) for name in ("before", "after")
        },
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
    parser.add_argument(
        "--encode-only", type=int, default=0, help="only time the two bf16 encode paths on N texts"
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. model.eval_batch_size=64")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    payload = json.loads(args.out.read_text()) if args.out.exists() else {"records": {}}
    if args.encode_only:
        result = {"threads": args.threads, "machine": machine_info(), **encode_paths(args.encode_only, 32, 3)}
        payload["encode_paths"] = result
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
        return
    record = {
        "commit": git_commit(),
        "machine": machine_info(),
        **measure(args.experiment, args.overrides, args.repeats),
    }
    record["machine_after"] = {"load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    payload = (
        json.loads(args.out.read_text()) if args.out.exists() else payload
    )  # another label may have finished
    payload["records"][args.label] = record
    payload["metric_difference_vs_before"] = metric_differences(payload["records"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
