"""A pure-torch stand-in for the ``flash_attn`` package (flash-attn 2.x), for CPU tests only.

``tests/test_flash_attention_standin.py`` puts ``tests/standins`` on ``sys.path``, so ``from flash_attn import
flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache`` inside transformers' flash-attention
integration finds these. The two attention functions have flash-attn 2.7's signatures and semantics
(``[batch, seq, heads, dim]`` / packed ``[tokens, heads, dim]`` layouts, grouped-query heads, causal
masks aligned to the bottom right when there are more keys than queries) and compute with
``torch.nn.functional.scaled_dot_product_attention``: what they stand in for is the CUDA kernel, not the
arithmetic. Options the project never uses (dropout, sliding windows, softcap, ALiBi, attention
probabilities, paged KV caches) raise instead of being ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__version__ = "2.7.4"


def _refuse_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs) -> None:
    if (
        dropout_p
        or tuple(window_size) != (-1, -1)
        or softcap
        or alibi_slopes is not None
        or return_attn_probs
    ):
        raise NotImplementedError(
            "the flash_attn stand-in implements plain (causal) attention only: no dropout, window, softcap, "
            "ALiBi or attention probabilities"
        )


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale, causal: bool) -> torch.Tensor:
    """One sequence: ``q [Sq, H, D]``, ``k``/``v`` ``[Sk, Hk, D]`` → ``[Sq, H, D]``."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    mask = None
    if causal:  # flash-attn >= 2.1: query i sees keys up to i + (Sk - Sq)
        offset = k.shape[0] - q.shape[0]
        mask = torch.arange(q.shape[0])[:, None] + offset >= torch.arange(k.shape[0])[None, :]
        mask = mask.to(q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=softmax_scale
    )
    return out.transpose(0, 1)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """``q [B, Sq, H, D]``, ``k``/``v`` ``[B, Sk, Hk, D]`` → ``[B, Sq, H, D]``."""
    _refuse_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])])


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Packed sequences: ``q [Tq, H, D]`` split at ``cu_seqlens_q``, ``k``/``v`` ``[Tk, Hk, D]`` at ``cu_seqlens_k``."""
    _refuse_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    if block_table is not None:
        raise NotImplementedError("the flash_attn stand-in has no paged KV cache (block_table)")
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    parts = [
        _attend(
            q[bounds_q[i] : bounds_q[i + 1]],
            k[bounds_k[i] : bounds_k[i + 1]],
            v[bounds_k[i] : bounds_k[i + 1]],
            softmax_scale,
            causal,
        )
        for i in range(len(bounds_q) - 1)
    ]
    return torch.cat(parts)


def flash_attn_with_kvcache(*args, **kwargs):
    """Imported by transformers alongside the others; used only for paged generation, which no test runs."""
    raise NotImplementedError("the flash_attn stand-in has no flash_attn_with_kvcache")
