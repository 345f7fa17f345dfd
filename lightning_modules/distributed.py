"""All-gather that keeps the local gradient (the tevatron / sentence-transformers pattern)."""

from __future__ import annotations

import torch
import torch.distributed as dist


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
