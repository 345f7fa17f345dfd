"""Frozen-LM memory: the project's loading vs a naive trainable load of the same model, one process each.

Both processes load SmolLM2-135M-Instruct and run the same step: a forward over a fixed batch whose
input embeddings require grad, and a backward to them (the way DREAM and LLM2Vec-Gen send gradients
*through* the frozen LM).

- ``project``: ``FrozenCausalLM`` (``requires_grad_(False)``, eval mode, the chosen dtype): no weight
  gradients, no optimizer state.
- ``naive``: ``AutoModelForCausalLM`` in fp32, trainable, and every parameter handed to AdamW (a
  frozen-by-intention model built like a trainable one): weight gradients and two moment buffers.

Peak resident memory is read in each child process (``ru_maxrss``); the baseline before loading is
reported too, so the model's share can be seen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import torch

from bench.machine import peak_rss_mb

MODES = ("project", "naive")


def step_through_lm(
    model: torch.nn.Module, batch: int, length: int, optimizer: torch.optim.Optimizer | None
) -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
    embeds = model.get_input_embeddings()(ids).detach().float().to(model.dtype).requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # a naive loop keeps the gradient buffers allocated


def run_mode(mode: str, dtype: str, batch: int, length: int) -> dict[str, Any]:
    baseline = peak_rss_mb()
    if mode == "project":
        from lightning_modules.models.frozen_lm import FrozenCausalLM

        model = FrozenCausalLM("smollm2-135m-instruct", dtype=dtype).model
        optimizer = None
    elif mode == "naive":
        from transformers import AutoModelForCausalLM

        from lightning_modules.models.registry import resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path("smollm2-135m-instruct"), dtype=torch.float32
        )
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    else:
        raise ValueError(f"unknown mode '{mode}' (choose from: {', '.join(MODES)})")
    loaded = peak_rss_mb()
    step_through_lm(model, batch, length, optimizer)
    step_through_lm(model, batch, length, optimizer)  # the optimizer state exists from the first step on
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "mode": mode,
        "dtype": dtype if mode == "project" else "float32",
        "batch": batch,
        "length": length,
        "parameters": parameters,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "baseline_rss_mb": round(baseline, 1),
        "after_load_rss_mb": round(loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def measure_in_subprocesses(batch: int, length: int) -> dict[str, Any]:
    """The project's loading in fp32 and bf16 and the naive fp32 load, each in its own Python process;
    ratios of their peak resident memory (whole process, and above the pre-load baseline)."""
    results = {}
    for mode, dtype in (("project", "float32"), ("project", "bfloat16"), ("naive", "float32")):
        command = [
            sys.executable,
            "-m",
            "bench.frozen_memory",
            mode,
            "--dtype",
            dtype,
            "--batch",
            str(batch),
            "--length",
            str(length),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"frozen-memory child '{mode} {dtype}' failed:\n{done.stderr[-3000:]}")
        results[f"{mode}_{dtype}"] = json.loads(done.stdout.strip().splitlines()[-1])
    naive = results["naive_float32"]
    for name in ("project_float32", "project_bfloat16"):
        project = results[name]
        results[f"naive_over_{name}_peak"] = naive["peak_rss_mb"] / project["peak_rss_mb"]
        project_share = project["peak_rss_mb"] - project["baseline_rss_mb"]
        results[f"naive_over_{name}_above_baseline"] = (
            (naive["peak_rss_mb"] - naive["baseline_rss_mb"]) / project_share if project_share > 0 else None
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="one frozen-LM memory measurement (run by bench.frozen_memory)"
    )
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    print(json.dumps(run_mode(args.mode, args.dtype, args.batch, args.length)))


if __name__ == "__main__":
    main()
