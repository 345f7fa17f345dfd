"""A recipe's memory plan: compose the experiment, build its step on meta, measure, tabulate."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.plan.estimate import LIMIT_GIB, measure_step, memory_plan
from bench.plan.steps import STEPS, Lengths
from experiments.config_check import ConfigError, compose_checked
from experiments.stage_runner import _stage_output as stage_output


def recipe(experiment: str, overrides: list[str]) -> dict[str, Any]:
    """The composed experiment, resolved; a pipeline stage's output (``${stage:name}``) stands for the model
    the stage starts from, whose architecture it keeps (a fine-tuned or LoRA-merged copy)."""
    cfg = compose_checked([f"exp={experiment}", *overrides])

    def stage_model(name: str, *, _root_: DictConfig) -> str:
        return str(_root_.stages[name].model)

    OmegaConf.register_new_resolver("stage", stage_model, replace=True)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    finally:
        OmegaConf.register_new_resolver("stage", stage_output, replace=True)


def recipe_gpus(cfg: dict[str, Any]) -> int:
    """GPUs the recipe trains on: ``trainer.devices`` x ``trainer.num_nodes`` (``auto``: one node of 8)."""
    devices = cfg.get("trainer", {}).get("devices", "auto")
    per_node = devices if isinstance(devices, int) else 8
    return per_node * int(cfg.get("trainer", {}).get("num_nodes", 1))


def plan_recipe(
    experiment: str, gpus: int | None, trainer: str, overrides: list[str], lengths: Lengths | None = None
) -> dict[str, Any]:
    """Build the recipe's step on meta, measure it, and return the plan with its assumptions."""
    cfg, lengths = recipe(experiment, overrides), lengths or Lengths()
    gpus = gpus or recipe_gpus(cfg)
    method = cfg.get("meta", {}).get("method")
    if method not in STEPS:
        raise ConfigError(
            f"make plan knows the methods {', '.join(STEPS)}; exp={experiment} has meta.method={method!r}"
        )
    step = STEPS[method](cfg["model"], cfg["data"], lengths, "meta", bool(cfg.get("tiny_models")))
    measured = measure_step(step)
    plan = memory_plan(step.models, measured, gpus, trainer)
    return {
        "experiment": experiment,
        "method": method,
        "gpus": gpus,
        "trainer": trainer,
        "overrides": overrides,
        "per_gpu_gib": plan.as_gib(),
        "fits": plan.peak / 1024**3 <= LIMIT_GIB,
        "limit_gib": LIMIT_GIB,
        "assumptions": {
            "batch_per_gpu": cfg["data"].get("batch_size"),
            "group_size": cfg["data"].get("group_size"),
            "query_tokens": lengths.query_tokens,
            "texts": "every text at its truncation length (the worst case)",
        },
        "count_seconds": round(measured.seconds, 2),
    }


def table(result: dict[str, Any]) -> str:
    gib = result["per_gpu_gib"]
    lines = [f"{result['experiment']}  ({result['trainer']}, {result['gpus']} GPUs)  per GPU, GiB:"]
    for name in (
        "parameters",
        "gradients",
        "optimizer",
        "activations",
        "recompute",
        "largest_op",
        "context",
        "peak",
    ):
        lines.append(f"  {name:<12} {gib[name]:>8.2f}")
    verdict = "fits" if result["fits"] else "DOES NOT FIT"
    lines.append(
        f"  verdict: {verdict} (peak {gib['peak']:.1f} GiB, limit {result['limit_gib']:.0f} GiB of an 80 GB GPU)"
    )
    return "\n".join(lines)
