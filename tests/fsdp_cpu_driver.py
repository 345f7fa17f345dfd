"""Two CPU ranks over gloo, started by ``tests/test_scale_fsdp.py`` with ``torch.distributed.run``.

One launch runs many checks, so the ~20 s of process start-up and imports is paid once per phase:

- ``train``: every method's tiny experiment under ``trainer=fsdp_cpu`` and under ``trainer=ddp_cpu`` (3 steps,
  gradient clipping, a bf16 frozen LM next to fp32 trainable parameters, activation checkpointing of every
  layer under FSDP, evaluation before and after, export), DREAM once more under ``bf16-mixed`` with
  intervention head calibration, and LLM2Vec-Gen's response generation split across the ranks with one
  cache folder per rank (no shared filesystem);
- ``kill``: the DREAM run (a frozen LM) with a checkpoint every step, both ranks killed while writing the second one;
- ``resume``: the same command again, which must resume from the first checkpoint.

Each rank writes what it saw (``probe_rank<r>.json`` in every run directory, ``generation_rank<r>.json``);
the test reads those files. Usage: ``python -m torch.distributed.run --nproc-per-node 2 tests/fsdp_cpu_driver.py
<output folder> <phase>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

KILLED_EXIT = 17
FSDP_PREFIX = "_fsdp_wrapped_module."
DRIVER_TARGET = "tests.fsdp_cpu_driver.RunProbe"

# per method: the experiment and its overrides; a bf16 frozen LM next to fp32 trainable parameters where
# that broke FSDP's wrap (a FlatParameter holds one dtype)
METHODS = {
    "contrastive": ["exp=default", "model.embedder.name_or_path=smollm2-135m-instruct"],
    "dream": ["exp=dream_tiny"],  # fp32: FSDP with recomputed layers must equal DDP to float noise
    "llm_embedder": [
        "exp=llm_embedder_tiny",
        "model.frozen_lm.dtype=bfloat16",
        "data.tasks.qa.max_queries=16",
    ],
    "llm2vec_gen": [
        "exp=llm2vec_gen_tiny",
        "model.frozen_lm.dtype=bfloat16",
        "data.max_train_queries=48",
        "stages=llm2vec_supervised_teacher",  # no teacher-building stage: the distributed step is under test
    ],
    "rabtriever": [
        "exp=rabtriever_tiny",
        "model.frozen_lm.dtype=bfloat16",
        "model.frozen_lm.name_or_path=smollm2-135m-instruct",  # the zero-shot teacher: no SFT stage
    ],
}
COMMON = [
    "debug=tiny",
    "trainer.max_steps=3",
    "trainer.log_every_n_steps=1",
    "trainer.gradient_clip_val=1.0",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "threads=1",
    f"+callbacks.probe._target_={DRIVER_TARGET}",
]
STRATEGY = {
    "fsdp": ["trainer=fsdp_cpu", "trainer.strategy.activation_checkpointing_layers=all"],
    "ddp": ["trainer=ddp_cpu"],
}
DREAM_BF16 = ["trainer.precision=bf16-mixed", "model.heads.selection=intervention", "model.heads.top_n=4"]
KILL_METHOD = "dream"  # a frozen LM the sharded checkpoint leaves out, and dropout in neither model
KILL_RUN = [
    *METHODS[KILL_METHOD],
    *COMMON,
    *STRATEGY["fsdp"],
    "callbacks.resume_checkpoint.every_n_train_steps=1",
]


def digest(tensors: list[torch.Tensor]) -> str:
    sha = hashlib.sha1()
    for tensor in tensors:
        sha.update(tensor.detach().float().cpu().numpy().tobytes())
    return sha.hexdigest()


def trainable_root_digest(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, object]:
    """Whether fit ran under a root FSDP unit, and a digest of the trainable parameters no layer unit holds
    (gathered whole on every rank): equal on all ranks only if their gradients were all-reduced."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = trainer.strategy.model
    trainable = [p for p in pl_module.parameters() if p.requires_grad]
    if not isinstance(root, FullyShardedDataParallel):
        return {"root_is_fsdp": False, "digest": digest(trainable), "count": len(trainable)}
    in_units = {
        id(p)
        for unit in root.modules()
        if isinstance(unit, FullyShardedDataParallel) and unit is not root
        for p in unit.parameters()
    }
    own = [p for p in trainable if id(p) not in in_units]
    with FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False):
        return {"root_is_fsdp": True, "digest": digest(own), "count": len(own)}


class RunProbe(L.Callback):
    """Records, on every rank, what the test checks about a run (added with ``+callbacks.probe``)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "strategy": type(trainer.strategy).__name__,
            "root": trainer_root_record(trainer, pl_module),
            "buffers": {n: str(b.dtype) for n, b in pl_module.named_buffers() if "inv_freq" in n},
            "parameter_dtypes": sorted({str(p.dtype) for p in pl_module.parameters()}),
            "trained_keys": sorted(pl_module.trained_state_keys()),
            **parameter_bytes(trainer, pl_module),
        }
        teacher = getattr(pl_module, "teacher", None)
        if hasattr(teacher, "namespace"):
            record["teacher_cache"] = [str(teacher.cache(t).directory) for t in sorted(teacher._caches)]
        if getattr(pl_module, "selected_heads", None) is not None:
            record["heads"] = {str(k): list(v) for k, v in pl_module.selected_heads.items()}
        responses = getattr(pl_module, "responses", None)
        if responses:
            record["responses"] = hashlib.sha1(
                json.dumps({k: r.text for k, r in sorted(responses.items())}).encode()
            ).hexdigest()
        path = Path(trainer.default_root_dir) / f"probe_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record, indent=1))


def parameter_bytes(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int]:
    """Bytes of the tensors a checkpoint keeps (trained) and leaves out (frozen), at their global sizes."""
    import math

    kept, sizes = pl_module.trained_state_keys(), {"trained_bytes": 0, "frozen_bytes": 0}
    for key, value in trainer.strategy.lightning_module_state_dict().items():  # sharded under FSDP
        sizes["trained_bytes" if key in kept else "frozen_bytes"] += (
            math.prod(value.size()) * value.dtype.itemsize
        )
    return sizes


def trainer_root_record(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, object]:
    record = trainable_root_digest(trainer, pl_module)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, record["digest"])
    return {**record, "equal_across_ranks": len(set(everyone)) == 1}


def run(overrides: list[str], output_root: Path) -> None:
    from tests.helpers import run_experiment

    run_experiment(overrides, output_root)


def check_generation(out: Path) -> None:
    """LLM2Vec-Gen's responses generated by both ranks, each into its own cache folder."""
    from lightning_modules.llm2vec_gen.generation import GenerationSettings, generate_responses
    from lightning_modules.models.frozen_lm import load_frozen_lm
    from lightning_modules.models.registry import resolve_model_path

    rank = dist.get_rank()
    model, tokenizer = load_frozen_lm(resolve_model_path("tiny-llama"))
    queries = [f"question {i} about the river and the song" + " word" * (i % 5) for i in range(20)]
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    root = out / f"generation-cache-rank{rank}"
    responses, report = generate_responses(
        model, tokenizer, queries, settings, "tiny", root=root, show_progress=False
    )
    stored = sum(len(json.loads(p.read_text())) for p in root.rglob("shard-*.json"))
    record = {
        "generated": report.generated,
        "total": report.total,
        "stored_here": stored,
        "responses": [[r.text, r.num_tokens, r.finished] for r in responses],
    }
    (out / f"generation_rank{rank}.json").write_text(json.dumps(record))


def kill_during_second_save() -> None:
    """Both ranks exit right after writing their shards of the second checkpoint (before its metadata)."""
    from torch.distributed.checkpoint import FileSystemWriter

    original = FileSystemWriter.write_data
    saves = {"count": 0}

    def write_then_die(self, plan, planner):
        future = original(self, plan, planner)
        future.wait()
        saves["count"] += 1
        if saves["count"] == 2:
            os._exit(KILLED_EXIT)
        return future

    FileSystemWriter.write_data = write_then_die


def main(out: Path, phase: str) -> None:
    import experiments.trainer_checks as trainer_checks

    trainer_checks.cpu_supports_bf16 = lambda: True  # emulated CPU bf16 is slow, not wrong: tiny models only
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    if phase == "train":
        check_generation(out)
        for overrides in METHODS.values():
            for strategy, extra in STRATEGY.items():
                run([*overrides, *COMMON, *extra], out / strategy)
        for strategy, extra in STRATEGY.items():
            run([*METHODS["dream"], *COMMON, *extra, *DREAM_BF16], out / f"{strategy}-bf16")
    elif phase == "kill":
        kill_during_second_save()
        run(KILL_RUN, out / "killed")
    elif phase == "resume":
        run(KILL_RUN, out / "killed")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
