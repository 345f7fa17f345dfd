"""The machine's own ceiling: square-matmul FLOP/s per dtype on the benchmark's thread count."""

from __future__ import annotations

from typing import Any

import torch

from bench.flops import matmul_flops
from bench.timing import time_interleaved

CEILING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure_ceiling(size: int = 2048, repeats: int = 7, warmup: int = 2) -> dict[str, Any]:
    """Median FLOP/s of ``[size, size] @ [size, size]`` in fp32 and bf16, interleaved in one run."""
    operands = {
        name: (torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt))
        for name, dt in CEILING_DTYPES.items()
    }
    calls = {name: (lambda a=a, b=b: torch.mm(a, b)) for name, (a, b) in operands.items()}
    timings = time_interleaved(calls, repeats=repeats, warmup=warmup)
    flops = matmul_flops(size, size, size)
    result: dict[str, Any] = {"matmul_size": size, "threads": torch.get_num_threads()}
    for name, timing in timings.items():
        result[name] = {
            "flops_per_s": flops / timing.median_s,
            "gflops_per_s": round(flops / timing.median_s / 1e9, 1),
            "timing": timing.as_dict(),
        }
    result["bf16_over_fp32"] = round(result["bf16"]["flops_per_s"] / result["fp32"]["flops_per_s"], 2)
    return result
