"""DREAM's attention bias as pure tensor functions (docs/dream.md, [ours]).

For a query with candidate documents ``d_1 … d_k`` and raw retriever cosines ``c_j = cos(E(q), E(d_j))``,
every selected attention head adds ``b_j = log(k · softmax_j(c_j / τ_attn))`` to the logits from the
positions after the documents to the key positions of document ``d_j``. Equal scores give ``b = 0`` (the
stock model); the temperature is applied once, here.
"""

from __future__ import annotations

import math

import torch


def document_bias(cosines: torch.Tensor, tau_attn: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``b_j = log(k · softmax_j(c_j / τ_attn))`` per query (METHODS.md "DREAM", the bias equation).

    Args:
        cosines: ``[B, k]`` raw cosine similarities (no temperature applied yet).
        tau_attn: the attention temperature ``τ_attn`` (> 0).
        valid: optional ``[B, k]`` bool; invalid candidates (padding) get bias 0 and are left out of the
            softmax, and ``k`` counts the valid candidates of each row.

    Returns:
        ``[B, k]`` biases; a row of equal cosines gives zeros. Differentiable in ``cosines``.

    Example:
        >>> document_bias(torch.tensor([[0.5, 0.5]]), 0.1)
        tensor([[0., 0.]])
    """
    if cosines.ndim != 2:
        raise ValueError(f"cosines must be [B, k], got shape {tuple(cosines.shape)}")
    if tau_attn <= 0:
        raise ValueError(f"tau_attn must be > 0, got {tau_attn}")
    logits = cosines / tau_attn
    if valid is None:
        return torch.log_softmax(logits, dim=-1) + math.log(cosines.shape[-1])
    valid = valid.to(torch.bool)
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1).to(cosines.dtype)
    log_probs = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
    return torch.where(valid, log_probs + count.log(), torch.zeros_like(log_probs))


def key_position_bias(bias: torch.Tensor, document_index: torch.Tensor) -> torch.Tensor:
    """Spread per-document biases over key positions.

    Args:
        bias: ``[B, k]`` per-document bias (from :func:`document_bias`).
        document_index: ``[B, T]`` long, the candidate index ``j`` of each position's document, or ``-1``
            for positions outside every document (padding, prompt, target).

    Returns:
        ``[B, T]``: ``bias[b, j]`` on document ``j``'s key block, exactly 0 elsewhere.
    """
    if bias.shape[0] != document_index.shape[0]:
        raise ValueError(
            f"batch sizes differ: bias {tuple(bias.shape)} vs document_index {tuple(document_index.shape)}"
        )
    inside = document_index >= 0
    gathered = torch.gather(bias, 1, document_index.clamp(min=0))
    return torch.where(inside, gathered, torch.zeros_like(gathered))
