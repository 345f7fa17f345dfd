"""The estimator against a measured peak: the same planned step run on CPU with real tensors, its live
allocations read from the PyTorch profiler (``profile_memory=True``: each operation's own allocations net of its frees, and frees outside any
operation, in time order).

``measured`` is the highest level of bytes allocated during forward + backward above the level before it;
``estimated`` is the meta count of the same step's share of the plan (gradients + activations + recompute +
largest op). ``python -m bench.plan.validate EXP [overrides]`` prints both; tests/test_plan.py holds them
within 25% for the tiny configurations.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from bench.plan.estimate import measure_step
from bench.plan.meter import parameter_bytes
from bench.plan.recipe import recipe
from bench.plan.steps import STEPS, Lengths, PlannedStep


@dataclass(frozen=True)
class Comparison:
    estimated: int
    measured: int

    @property
    def ratio(self) -> float:
        return self.estimated / self.measured


def measured_step_peak(step: PlannedStep) -> int:
    """Peak bytes allocated on CPU during the step's forward and backward, above the starting level."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.forward().backward()
    changes = sorted((event.time_range.start, event.self_cpu_memory_usage) for event in prof.events())
    level = peak = 0
    for _, change in changes:
        level += change
        peak = max(peak, level)
    return peak


def estimated_step_bytes(step: PlannedStep) -> int:
    measured = measure_step(step)
    gradients = parameter_bytes(step.models, trainable=True)
    return gradients + measured.activations + measured.recompute + measured.largest_op


def compare(experiment: str, overrides: list[str], lengths: Lengths | None = None) -> Comparison:
    """Estimate ``experiment`` (with ``debug=tiny``-sized models) on meta and measure it on CPU."""
    cfg, lengths = recipe(experiment, overrides), lengths or Lengths()
    build = STEPS[cfg["meta"]["method"]]
    tiny = bool(cfg.get("tiny_models"))
    estimated = estimated_step_bytes(build(cfg["model"], cfg["data"], lengths, "meta", tiny))
    torch.manual_seed(0)
    measured = measured_step_peak(build(cfg["model"], cfg["data"], lengths, "cpu", tiny))
    return Comparison(estimated, measured)


if __name__ == "__main__":
    result = compare(sys.argv[1], sys.argv[2:])
    print(
        f"estimated {result.estimated / 2**20:.1f} MiB, measured {result.measured / 2**20:.1f} MiB, ratio {result.ratio:.3f}"
    )
