"""Training-step throughput and FLOPs utilisation of each method, built from its own Hydra experiment.

Each method is one :class:`MethodAdapter`: an experiment name plus the overrides of a ``tiny`` and a
``small`` configuration. The harness composes ``exp=<name>`` with those overrides, lets Lightning run one
real step (so every setup hook, cache and ``configure_optimizers`` runs as in training), then times
``training_step`` + backward + ``on_before_optimizer_step`` + optimizer step on one fixed batch.
One configuration per process (``python -m bench.train_step METHOD SIZE``) so peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.flops import count_flops, utilisation
from bench.machine import peak_rss_mb
from bench.timing import time_calls
from datamodules.batch import RetrievalBatch

REPO = Path(__file__).resolve().parents[1]
TINY = ("debug=tiny",)


@dataclass(frozen=True)
class MethodAdapter:
    """How to benchmark one method: its experiment, the package that must exist, and per-size overrides."""

    method: str
    experiment: str
    package: str
    sizes: dict[str, tuple[str, ...]]
    notes: dict[str, str] = field(default_factory=dict)

    def available(self) -> bool:
        return (REPO / "lightning_modules" / self.package).exists() and (
            REPO / "experiments" / "exp" / f"{self.experiment}.yaml"
        ).exists()


ADAPTERS: dict[str, MethodAdapter] = {
    adapter.method: adapter
    for adapter in (
        MethodAdapter(
            "contrastive_minilm",
            "default",
            "contrastive",
            {
                "tiny": TINY,
                "small": ("data.batch_size=8", "data.group_size=2"),
                "small_bf16": ("data.batch_size=8", "data.group_size=2", "trainer.precision=bf16-mixed"),
            },
            {
                "small": "all-MiniLM-L6-v2 full fine-tuning, 8 queries x (1 positive + 1 hard negative), max length 128"
            },
        ),
        MethodAdapter(
            "contrastive_smollm",
            "contrastive_tiny_smollm",
            "contrastive",
            {
                "tiny": TINY,
                "small": ("data.batch_size=4", "data.group_size=2"),
                "small_bf16": ("data.batch_size=4", "data.group_size=2", "trainer.precision=bf16-mixed"),
            },
            {"small": "SmolLM2-135M LoRA r=8 embedder, 4 queries x 2 documents, max length 128"},
        ),
        MethodAdapter(
            "dream",
            "dream_tiny",
            "dream",
            {"tiny": TINY, "small": ("data.batch_size=2", "data.group_size=5")},
            {
                "small": "SmolLM2-135M LoRA embedder + frozen SmolLM2-135M, 2 queries x 5 candidates x 64 tokens"
            },
        ),
        MethodAdapter(
            "llm2vec_gen",
            "llm2vec_gen_tiny",
            "llm2vec_gen",
            {  # the teacher is frozen and its targets are computed before the step: MiniLM, no stage to build
                "tiny": (*TINY, "stages=llm2vec_supervised_teacher"),
                "small": (
                    "stages=llm2vec_supervised_teacher",
                    "data.batch_size=4",
                    "data.max_train_queries=4",
                    "model.generation.max_new_tokens=32",
                ),
            },
            {
                "small": "frozen SmolLM2-135M + 10 tokens and 2 heads, MiniLM teacher, 4 queries, responses <= 32 tokens"
            },
        ),
        MethodAdapter(
            "llm_embedder",
            "llm_embedder_tiny",
            "llm_embedder",
            {"tiny": TINY, "small": ("data.batch_size=2", "data.tasks.qa.max_queries=8")},
            {
                "small": "SmolLM2-135M LoRA embedder, 2 queries x 5 BM25-chosen paragraphs, teacher scores cached before timing"
            },
        ),
        MethodAdapter(
            "rabtriever",
            "rabtriever_tiny",
            "rabtriever",
            {  # the zero-shot LM: the same step cost as the SFT stage's output, which is not built here
                "tiny": (*TINY, "model.frozen_lm.name_or_path=smollm2-135m-instruct"),
                "small": (
                    "model.frozen_lm.name_or_path=smollm2-135m-instruct",
                    "data.batch_size=2",
                    "data.group_size=4",
                ),
            },
            {"small": "frozen SmolLM2-135M teacher = student, MLP predictor, 2 queries x 4 paragraphs"},
        ),
    )
}


def compose_experiment(experiment: str, overrides: tuple[str, ...], output_root: str):
    from hydra import compose, initialize_config_dir

    from experiments import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"exp={experiment}", f"output_root={output_root}", *overrides])


class TokenCounter:
    """Counts the token positions the HF models inside a module process in their forwards.

    Every ``PreTrainedModel`` is hooked (a method may call a causal LM or its inner base model directly);
    a call made while another hooked model is already running (the base model inside ``...ForCausalLM``)
    is not counted again.
    """

    def __init__(self, module: nn.Module):
        from transformers import PreTrainedModel

        self.positions = 0
        self.non_padding = 0
        self._depth = 0
        self._handles = []
        for sub in module.modules():
            if isinstance(sub, PreTrainedModel):
                self._handles.append(sub.register_forward_pre_hook(self._enter, with_kwargs=True))
                self._handles.append(sub.register_forward_hook(self._leave, always_call=True))

    def _enter(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._depth += 1
        if self._depth == 1:
            self._count(args, kwargs)

    def _leave(self, *_: Any) -> None:
        self._depth -= 1

    def _count(self, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if isinstance(ids, torch.Tensor):
            shape = ids.shape
        elif isinstance(embeds, torch.Tensor):
            shape = embeds.shape[:2]
        else:
            return
        positions = int(shape[0] * shape[1])
        self.positions += positions
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == shape:
            self.non_padding += int(mask.sum())
        else:
            self.non_padding += positions

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, RetrievalBatch):
        return len(batch)
    if isinstance(batch, dict):
        for key in ("queries", "query_ids", "input_ids"):
            if key in batch:
                return len(batch[key])
        for value in batch.values():
            if isinstance(value, (list, torch.Tensor)):
                return len(value)
    raise ValueError(
        f"cannot tell the batch size of a {type(batch).__name__} batch (expected a dict with 'queries')"
    )


def step_dtype(trainer_precision: str) -> str:
    return "bf16" if "bf16" in str(trainer_precision) else "fp32"


def build_step(
    module: Any,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
) -> Callable[[], float]:
    """One optimisation step on ``batch`` as Lightning's automatic optimisation runs it; ``forward_context``
    is the precision plugin's (autocast for ``bf16-mixed``), around ``training_step`` only, as in Lightning."""

    def step() -> float:
        with forward_context():
            loss = module.training_step(batch, 0)
        if loss is None:
            raise RuntimeError("training_step returned None (skipped batch) during the benchmark")
        if isinstance(loss, dict):
            loss = loss["loss"]
        loss.backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def profile_step(step: Callable[[], float], rows: int = 12) -> dict[str, Any]:
    """Where one step's CPU time goes: top ops by self time and their share by kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    kinds: dict[str, float] = {}
    for event in events:
        kinds[op_kind(event.key)] = kinds.get(op_kind(event.key), 0.0) + event.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    return {
        "share_by_kind": {k: round(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in top
        ],
    }


MATMUL_OPS = ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "addbmm")


def op_kind(name: str) -> str:
    """Coarse kind of a profiled op: matmul, attention, copy/cast, optimizer, elementwise/other."""
    op = name.removeprefix("aten::")
    if op in MATMUL_OPS or op.startswith("mkldnn"):
        return "matmul"
    if "attention" in op or "softmax" in op:
        return "attention/softmax"
    if op in (
        "copy_",
        "_to_copy",
        "to",
        "contiguous",
        "clone",
        "cat",
        "index_select",
        "embedding",
        "embedding_dense_backward",
    ):
        return "copy/cast/gather"
    if "adam" in op.lower() or op.startswith("_foreach") or "Optimizer" in name:
        return "optimizer"
    return "elementwise/other"


def fitted_step(adapter: MethodAdapter, size: str) -> tuple[Any, Any, Any, Callable[[], float]]:
    """``(cfg, module, batch, step)``: the experiment's module after one real training step (every setup
    hook, cache and the optimiser ran as in training), detached, with one training step on a fixed batch."""
    import lightning as L
    from hydra.utils import instantiate

    from experiments.cli import prepare_process

    workdir = tempfile.mkdtemp(prefix="lsr-bench-")
    cfg = compose_experiment(adapter.experiment, adapter.sizes[size], workdir)
    prepare_process(bool(cfg.offline), cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.model, _convert_="all")
    trainer = instantiate(
        cfg.trainer,
        max_steps=1,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=workdir,
    )
    trainer.fit(module, datamodule=datamodule)  # runs the method's setup hooks, caches and optimiser once
    optimizer = trainer.optimizers[0]
    batch = next(iter(datamodule.train_dataloader()))
    forward_context = trainer.precision_plugin.forward_context
    module.trainer = None  # detached: self.log() becomes a no-op, as outside a loop
    module.train()
    return cfg, module, batch, build_step(module, optimizer, batch, forward_context)


def benchmark(
    method: str, size: str, repeats: int, warmup: int, ceilings: dict[str, float], profile_below: float
) -> dict[str, Any]:
    adapter = ADAPTERS[method]
    cfg, module, batch, step = fitted_step(adapter, size)
    counter = TokenCounter(module)
    first_loss = step()
    positions, non_padding = counter.positions, counter.non_padding
    counter.close()
    flops = count_flops(step)
    timing = time_calls(step, repeats=repeats, warmup=warmup)
    samples = batch_size_of(batch)
    seconds = timing.median_s
    dtype = step_dtype(cfg.trainer.precision)
    result: dict[str, Any] = {
        "method": method,
        "size": size,
        "experiment": adapter.experiment,
        "overrides": list(adapter.sizes[size]),
        "description": adapter.notes.get(
            size, "debug=tiny: tiny random models of each family, in-repo fixture"
        ),
        "step_dtype": dtype,
        "loss_of_first_timed_batch": first_loss,
        "samples_per_step": samples,
        "token_positions_per_step": positions,
        "non_padding_tokens_per_step": non_padding,
        "timing": timing.as_dict(),
        "samples_per_s": samples / seconds,
        "tokens_per_s": non_padding / seconds,
        "counted_flops_per_step": flops,
        "achieved_gflops_per_s": flops / seconds / 1e9,
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in module.parameters()),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    for name, ceiling in ceilings.items():
        result[f"mfu_vs_{name}"] = utilisation(flops, seconds, ceiling)
    own = result.get(f"mfu_vs_{dtype}")
    if size != "tiny" and own is not None and own < profile_below:
        result["profile"] = profile_step(step)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=sorted(ADAPTERS))
    parser.add_argument("size", choices=("tiny", "small", "small_bf16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ceiling-fp32", type=float, required=True, help="FLOP/s")
    parser.add_argument("--ceiling-bf16", type=float, required=True, help="FLOP/s")
    parser.add_argument(
        "--profile-below", type=float, default=0.40, help="profile small configs whose MFU is lower"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("LSR_BENCH_THREADS", torch.get_num_threads())))
    result = benchmark(
        args.method,
        args.size,
        args.repeats,
        args.warmup,
        {"fp32": args.ceiling_fp32, "bf16": args.ceiling_bf16},
        args.profile_below,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
