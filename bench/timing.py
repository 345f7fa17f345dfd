"""Timing on a noisy shared machine: warm up, repeat, report the median; interleave what is compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median over ``repeats`` timed calls after ``warmup`` untimed ones.

    ``cpu_share`` is this process's CPU time over (wall time × torch threads) across the timed calls: near
    1 on an idle machine, well below 1 when other processes took the cores (the wall times are then
    inflated; say so next to them).
    """

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int
    cpu_share: float | None = None

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def summarize(seconds: list[float], warmup: int, cpu_seconds: float | None = None) -> Timing:
    if not seconds:
        raise ValueError("no timed repeats: repeats must be ≥ 1")
    share = None
    if cpu_seconds is not None and sum(seconds) > 0:
        share = cpu_seconds / (sum(seconds) * max(torch.get_num_threads(), 1))
    return Timing(statistics.median(seconds), min(seconds), max(seconds), len(seconds), warmup, share)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return summarize(seconds, warmup, time.process_time() - cpu_start)


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time several functions in round-robin (A B A B …) so a burst of load on the machine hits all alike.

    Ratios between the returned medians are the same-run comparisons the benchmark reports.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, float] = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - cpu_start
    return {name: summarize(values, warmup, cpu[name]) for name, values in seconds.items()}
