"""Across ranks: all-gather that keeps the local gradient (the tevatron / sentence-transformers pattern),
work split evenly across ranks, and frozen-LM passes that stay in lockstep under FSDP (docs/scale.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; only this rank's slice carries gradient.

    Falls back to the tensor itself when not distributed. Every rank must pass the same shape.
    """
    if world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered, dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (e.g. integer ids) from every rank along dim 0, without gradient."""
    if world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def gather_padded(tensor: torch.Tensor, pad_value: int | float = -1) -> torch.Tensor:
    """Like :func:`gather_no_grad` for ``[N, W]`` tensors whose width ``W`` may differ across ranks.

    Each rank's tensor is right-padded with ``pad_value`` to the widest rank's ``W`` before the
    all-gather (e.g. ``positive_ids``: one rank's batch may hold a query with three positives while
    every query of another rank has two). ``all_gather`` needs equal shapes, otherwise it fails or hangs.
    """
    if world_size() == 1:
        return tensor
    if tensor.ndim != 2:
        raise ValueError(f"gather_padded expects a 2-d tensor, got shape {tuple(tensor.shape)}")
    width = torch.tensor([tensor.shape[1]], device=tensor.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = torch.nn.functional.pad(tensor, (0, int(width.item()) - tensor.shape[1]), value=pad_value)
    return gather_no_grad(padded)


# ---- work split across ranks, and frozen-LM passes that stay in lockstep under FSDP ---------------------------
def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` when not distributed."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def union_over_ranks(items: Sequence[T]) -> list[T]:
    """Every rank's ``items`` without duplicates, rank 0's first: the same list on every rank."""
    return list(dict.fromkeys(item for part in all_gather_objects(list(items)) for item in part))


def padded_share(items: Sequence[T], rank: int, world: int) -> tuple[list[T], int]:
    """``(items[rank::world] padded to ceil(len / world) with copies of items[0], number of real ones)``.

    Every rank gets the same number of entries, so a loop of frozen-LM passes over them runs the same
    number of forwards everywhere (FSDP gathers each layer inside its forward: a rank that stops early
    leaves the others waiting in an all-gather). The padding is work to throw away.
    """
    share = list(items[rank::world])
    per_rank = -(-len(items) // world)
    return share + [items[0]] * (per_rank - len(share)), len(share)


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP shards any part of ``module`` (its forwards are then collective operations)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())


def max_over_ranks(count: int) -> int:
    """The largest ``count`` of all ranks (itself when not distributed)."""
    if world_size() == 1:
        return count
    value = torch.tensor([count], dtype=torch.long)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def lockstep(batches: Sequence[T], filler: T, sharded: bool) -> Iterator[tuple[T, bool]]:
    """``(batch, real)`` for this rank's ``batches``, then ``(filler, False)`` until every rank has yielded
    as many as the busiest one, when ``sharded`` (FSDP: every forward is collective). Not sharded: just
    the batches, no communication."""
    for batch in batches:
        yield batch, True
    if sharded:
        for _ in range(max_over_ranks(len(batches)) - len(batches)):
            yield filler, False


def call_through_strategy(
    trainer: Any, pl_module: nn.Module, method: str | Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """``pl_module.<method>(*args, **kwargs)`` (or ``method(*args, **kwargs)`` for a callable); under FSDP
    routed through the wrapped model's ``forward``.

    FSDP gathers a unit's sharded parameters only inside ``forward``, and the first FSDP module called
    becomes the root: a plain call on the LightningModule would see the root unit's parameters as flat
    shards, or make a layer the root. Lightning's own training/validation steps use the same forward
    redirection. Every rank must make the same calls (each forward inside is collective).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = getattr(trainer, "strategy", None)
    name = method if isinstance(method, str) else REDIRECTED_CALL
    if not (
        isinstance(strategy, FSDPStrategy) and strategy.model is not None and strategy.model is not pl_module
    ):
        return (getattr(pl_module, method) if isinstance(method, str) else method)(*args, **kwargs)
    if not isinstance(method, str):
        object.__setattr__(pl_module, REDIRECTED_CALL, method)
    try:
        return strategy._forward_redirection(strategy.model, pl_module, name, *args, **kwargs)
    finally:
        if not isinstance(method, str):
            object.__delattr__(pl_module, REDIRECTED_CALL)


REDIRECTED_CALL = "_function_inside_forward"
