"""Seconds per training step of each pipeline stage at the lab's sizes on the real SmolLM2-135M.

``python -m bench.stage_steps`` (``make bench-stages``) times one optimisation step of the LLM2Vec teacher
stages (MNTP, SimCSE) of ``exp=llm2vec_gen_tiny`` and of the reranker SFT stage of ``exp=rabtriever_tiny``,
with the settings those experiments give their stages, and writes ``bench/results/stage_steps.json``:
median wall seconds, the CPU share (below 1 when other processes took the cores) and CPU seconds per step
(with one thread, close to the wall time on an idle core), plus each stage's projected build time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "stage_steps.json"
STAGES = (
    ("llm2vec_gen_tiny", "llm2vec_mntp"),
    ("llm2vec_gen_tiny", "llm2vec_teacher"),
    ("rabtriever_tiny", "reranker_sft"),
)


def stage_settings_of(experiment: str, stage: str) -> tuple[str, Any]:
    """The stage's kind and settings as ``exp=<experiment>`` configures it (real models)."""
    from hydra import compose, initialize_config_dir

    from experiments import CONFIG_DIR
    from experiments.stage_builders import make_settings
    from experiments.stage_runner import stage_settings

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"exp={experiment}"])
    values = stage_settings(cfg, stage)
    if "${stage:" in json.dumps(values) or values.get("model", "").startswith("/"):
        values["model"] = "smollm2-135m-instruct"  # an upstream stage's output: same architecture
    return values["kind"], make_settings(values["kind"], values, tiny=False)


def module_and_batch(kind: str, settings: Any) -> tuple[torch.nn.Module, Any]:
    """The stage's LightningModule and one training batch, built as the stage's builder builds them."""
    if kind == "reranker_sft":
        from datamodules.retrieval import RetrievalDataModule
        from lightning_modules.rabtriever.reranker_sft import RerankerSFTModule

        data = RetrievalDataModule(
            **{**settings.data, "batch_size": settings.batch_size, "seed": settings.seed}
        )
        data.setup("fit")
        module = RerankerSFTModule(
            settings.model, prompt=settings.prompt, lora=settings.lora, lr=settings.lr, loss=settings.loss
        )
        return module, next(iter(data.train_dataloader()))
    from datamodules.unlabeled_text import UnlabeledTextDataModule, load_unlabeled_texts
    from experiments.stage_builders import lora_module_args

    texts = load_unlabeled_texts(settings.sources, settings.max_texts_per_source)
    if kind == "llm2vec_mntp":
        from lightning_modules.llm2vec.mntp import MNTPModule

        module = MNTPModule(settings.model, **lora_module_args(settings))
        extra = {"mlm_probability": settings.mlm_probability, "mask_token": settings.mask_token}
    else:
        from lightning_modules.llm2vec.simcse import SimCSEModule

        module = SimCSEModule(settings.model, dropout=settings.dropout, **lora_module_args(settings))
        extra = {}
    mode = "mntp" if kind == "llm2vec_mntp" else "simcse"
    data = UnlabeledTextDataModule(
        texts, module.tokenizer, mode, settings.batch_size, settings.max_length, seed=settings.seed, **extra
    )
    data.setup("fit")
    return module, next(iter(data.train_dataloader()))


def measure(experiment: str, stage: str, repeats: int) -> dict[str, Any]:
    from bench.timing import time_calls
    from bench.train_step import build_step

    kind, settings = stage_settings_of(experiment, stage)
    module, batch = module_and_batch(kind, settings)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=settings.lr)
    step = build_step(module, optimizer, batch)
    cpu_start = time.process_time()
    timing = time_calls(step, repeats=repeats, warmup=1)
    cpu_per_step = (time.process_time() - cpu_start) / (repeats + 1)
    shape = batch["input_ids"].shape if isinstance(batch, dict) else (len(batch.flat_documents),)
    return {
        "experiment": experiment,
        "stage": stage,
        "kind": kind,
        "batch": list(shape),
        "steps": settings.steps,
        "timing": timing.as_dict(),
        "cpu_seconds_per_step": round(cpu_per_step, 3),
        "projected_build_minutes_idle_core": round(cpu_per_step * settings.steps / 60, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="comma-separated stage names (default: all)")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    torch.set_num_threads(args.threads)
    from bench.machine import machine_info

    runs = []
    for experiment, stage in [(e, s) for e, s in STAGES if not only or s in only]:
        print(f"[bench] stage step {experiment} {stage}", flush=True)
        runs.append(measure(experiment, stage, args.repeats))
        print(json.dumps(runs[-1]), flush=True)
    if only and args.out.exists():  # a subset re-measured: keep the other stages' entries
        measured = {(r["experiment"], r["stage"]) for r in runs}
        kept = [
            r
            for r in json.loads(args.out.read_text())["runs"]
            if (r["experiment"], r["stage"]) not in measured
        ]
        runs = sorted(kept + runs, key=lambda r: [s for _, s in STAGES].index(r["stage"]))
    payload = {"part": "stage_steps", "threads": args.threads, "machine": machine_info(), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
