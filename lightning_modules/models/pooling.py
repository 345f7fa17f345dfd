"""Pooling of token states into one vector: CLS, mean, or last token (left- or right-padding aware)."""

from __future__ import annotations

import torch

POOLINGS = ("cls", "mean", "last")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-padding token; works for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden [B, T, H]`` under ``attention_mask [B, T]`` into ``[B, H]``."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if pooling == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]
    raise ValueError(f"unknown pooling '{pooling}' (choose from: {', '.join(POOLINGS)})")
