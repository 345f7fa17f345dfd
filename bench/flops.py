"""Counted FLOPs (``torch.utils.flop_counter``) and model FLOPs utilisation.

``FlopCounterMode`` counts matmul-like ops (mm, addmm, bmm, convolution, attention kernels) in forward
and backward, 2 FLOPs per multiply-add; elementwise ops are not counted, as in the usual MFU definition.
PyTorch has no formula for the CPU flash-attention kernel SDPA dispatches to on CPU, so it is added here
with the same counting rule as the library's GPU attention formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_forward(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(
    grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an ``[m, k] @ [k, n]`` matmul: one multiply and one add per term."""
    return 2 * m * k * n


def count_flops(fn: Callable[[], object]) -> int:
    """Total counted FLOPs of one call of ``fn`` (forward and any backward it runs)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def utilisation(flops: float, seconds: float, ceiling_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the machine's measured matmul FLOP/s."""
    if seconds <= 0 or ceiling_flops_per_s <= 0:
        raise ValueError(f"seconds ({seconds}) and ceiling ({ceiling_flops_per_s}) must be positive")
    return flops / seconds / ceiling_flops_per_s
