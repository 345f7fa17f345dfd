"""Per-GPU memory of one training step: parameters, gradients, optimizer state (sharded under FSDP), what
autograd keeps (counted on meta tensors) and the largest single operation's working memory.

``peak = parameters + gradients + optimizer + activations + recompute + largest op + CUDA context``
(recompute: what checkpointed segments hold again in backward, :mod:`bench.plan.recompute`). Conventions:
AdamW keeps two moment tensors per trainable parameter, in the parameter's dtype; DDP's gradients are views
into its buckets (``gradient_as_bucket_view: true``), no extra copy; FSDP (``lightning_modules/fsdp.py``)
shards the transformer layers of both models and replicates the frozen root (embeddings, final norm, LM
head), and gathers one layer at a time (two with prefetch).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from bench.plan.meter import LargestOp, SavedTensors, parameter_bytes, storage_bytes, storage_key
from bench.plan.models import fused_attention_on_meta, no_packed_sequences_on_meta
from bench.plan.recompute import SegmentMeter
from bench.plan.steps import PlannedStep

GIB = 1024**3
CUDA_CONTEXT = 1 * GIB  # CUDA context, cuBLAS workspace and NCCL buffers, roughly
LIMIT_GIB = 70.0  # the plan must fit this on an 80 GB GPU: the rest is headroom for fragmentation


@dataclass(frozen=True)
class StepMeasure:
    activations: int
    recompute: int
    largest_op: int
    seconds: float


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    recompute: int
    largest_op: int
    context: int

    @property
    def peak(self) -> int:
        return sum(asdict(self).values())

    def as_gib(self) -> dict[str, float]:
        return {name: round(value / GIB, 2) for name, value in {**asdict(self), "peak": self.peak}.items()}


def measure_step(step: PlannedStep) -> StepMeasure:
    """Run forward (counting what autograd keeps) and backward (the largest op throughout)."""
    start = time.perf_counter()
    parameters = list(step.models.parameters())
    saved = SavedTensors(exclude=parameters)
    segments = SegmentMeter(step.models, parameters)
    with no_packed_sequences_on_meta(), fused_attention_on_meta(), LargestOp() as largest:
        with saved, segments:
            loss = step.forward()
        loss.backward()
    working = max(largest.bytes, largest.no_grad_peak)
    return StepMeasure(saved.bytes, segments.bytes, working, time.perf_counter() - start)


def sharded_layer_bytes(models: nn.Module) -> tuple[int, int]:
    """``(bytes in transformer layers, bytes of the largest layer)``: what FSDP shards and gathers."""
    seen: dict[int, int] = {}
    largest = 0
    for module in models.modules():
        if isinstance(module, GradientCheckpointingLayer):
            size = 0
            for parameter in module.parameters():
                seen[storage_key(parameter)] = storage_bytes(parameter)
                size += storage_bytes(parameter)
            largest = max(largest, size)
    return sum(seen.values()), largest


def memory_plan(models: nn.Module, measured: StepMeasure, gpus: int, trainer: str) -> MemoryPlan:
    """The per-GPU plan for ``trainer`` (``ddp``: everything replicated; ``fsdp``: layers sharded)."""
    total, trainable = parameter_bytes(models), parameter_bytes(models, trainable=True)
    gradients, optimizer = trainable, 2 * trainable
    if trainer == "fsdp":
        layers, largest_layer = sharded_layer_bytes(models)
        total = total - layers + layers // gpus + 2 * largest_layer
        gradients, optimizer = gradients // gpus, optimizer // gpus
    elif trainer != "ddp":
        raise ValueError(f"trainer must be ddp or fsdp, got {trainer!r}")
    return MemoryPlan(
        total,
        gradients,
        optimizer,
        measured.activations,
        measured.recompute,
        measured.largest_op,
        CUDA_CONTEXT,
    )


def on_meta(step: PlannedStep) -> bool:
    return all(p.device == torch.device("meta") for p in step.models.parameters())
