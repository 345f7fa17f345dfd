"""DREAM's attention function, registered with transformers' ``AttentionInterface`` (no modeling fork).

``dream_sdpa`` and ``dream_fa2`` behave exactly like transformers' stock ``sdpa`` and ``flash_attention_2``
attention, except in the layers named by the forward kwarg
``dream_bias``: there, the selected heads add the per-key-position bias of :class:`DreamBias` to the
attention logits of every query position at or after ``DreamBias.context_length`` (the positions after
the documents); the other heads of that layer run plain SDPA under the same mask.

Usage::

    register_dream_attention()
    model.set_attn_implementation(DREAM_SDPA)
    model(input_ids, attention_mask=mask, dream_bias=DreamBias(key_bias, context_length, heads))

Because the bias is a forward kwarg, activation checkpointing of the decoder layers recomputes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import flash_attention_mask, sdpa_mask

DREAM_SDPA = "dream_sdpa"
# no "flash" in the name: transformers treats any implementation whose name contains "flash" as a request
# for its own flash kernels (is_flash_attention_requested) and tries to import one by that name at load
DREAM_FLASH = "dream_fa2"


@dataclass(frozen=True)
class DreamBias:
    """What the DREAM attention function needs, passed to the model as the ``dream_bias`` forward kwarg.

    Attributes:
        key_bias: ``[B, T]`` additive bias per key position (document ``j``'s block carries ``b_j``, every
            other position 0). Key positions beyond ``T`` (prompt, target) get no bias.
        context_length: absolute position of the first token after the documents; query positions from
            here on are biased, earlier ones (the documents themselves) are not.
        heads: ``{layer index: head indices}``; layers not listed run the stock attention untouched.
    """

    key_bias: torch.Tensor
    context_length: int
    heads: dict[int, tuple[int, ...]]


def flash_attn_available() -> bool:
    """transformers' own check: the ``flash-attn`` 2 distribution (>= 2.3.3) and a CUDA (or MLU/MUSA) device."""
    from transformers import modeling_flash_attention_utils

    return modeling_flash_attention_utils.is_flash_attn_2_available()


def _allowed_keys(
    attention_mask: torch.Tensor | None, batch: int, q_length: int, kv_length: int, device
) -> torch.Tensor:
    """Boolean ``[B, 1, Q, K]`` (True = may attend) from whatever mask format the stock path received.

    ``None`` (pure causal; transformers skipped the mask) and 2D padding masks (the flash-attn format) are
    expanded to causal ∧ padding with the queries aligned to the last ``Q`` key positions.
    """
    if attention_mask is not None and attention_mask.ndim == 4:
        if attention_mask.dtype == torch.bool:
            return attention_mask
        return attention_mask > torch.finfo(attention_mask.dtype).min / 2
    query_positions = torch.arange(kv_length - q_length, kv_length, device=device)
    causal = query_positions[:, None] >= torch.arange(kv_length, device=device)[None, :]
    allowed = causal[None, None].expand(batch, 1, q_length, kv_length)
    if attention_mask is not None:  # 2D [B, K] padding mask
        allowed = allowed & attention_mask[:, -kv_length:].to(torch.bool)[:, None, None, :]
    return allowed


def biased_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dream_bias: DreamBias,
    heads: tuple[int, ...],
    scaling: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention of one layer with the DREAM bias on ``heads``; returns ``[B, Q, H, D]`` like transformers.

    Selected and unselected heads go through separate SDPA calls so the unselected ones see exactly the
    stock logits; both use the same (causal ∧ padding) mask as an additive float mask.
    """
    batch, num_heads, q_length, _ = query.shape
    kv_length = key.shape[2]
    groups = getattr(module, "num_key_value_groups", num_heads // key.shape[1])
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    allowed = _allowed_keys(attention_mask, batch, q_length, kv_length, query.device)
    floor = torch.finfo(query.dtype).min
    base = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(~allowed, floor)

    key_bias = dream_bias.key_bias.to(query.dtype)
    if key_bias.shape[0] != batch or key_bias.shape[1] > kv_length:
        raise ValueError(
            f"dream_bias.key_bias has shape {tuple(key_bias.shape)} but layer {module.layer_idx} sees batch {batch} "
            f"and {kv_length} key positions"
        )
    key_bias = F.pad(key_bias, (0, kv_length - key_bias.shape[1]))
    query_positions = torch.arange(kv_length - q_length, kv_length, device=query.device)
    biased_rows = (query_positions >= dream_bias.context_length).to(query.dtype)
    bias = key_bias[:, None, None, :] * biased_rows[None, None, :, None]
    # keep masked logits at the floor: adding a negative bias to finfo.min would overflow to -inf
    biased_mask = torch.where(allowed, base + bias, base)

    selected = torch.tensor(heads, device=query.device, dtype=torch.long)
    others = torch.tensor(
        [h for h in range(num_heads) if h not in set(heads)], device=query.device, dtype=torch.long
    )
    sdpa = functools.partial(F.scaled_dot_product_attention, scale=scaling, dropout_p=dropout)
    outputs = [sdpa(query[:, selected], key[:, selected], value[:, selected], attn_mask=biased_mask)]
    order = [selected]
    if len(others):
        outputs.append(sdpa(query[:, others], key[:, others], value[:, others], attn_mask=base))
        order.append(others)
    inverse = torch.argsort(torch.cat(order))
    output = torch.cat(outputs, dim=1)[:, inverse]
    return output.transpose(1, 2).contiguous()


def dream_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dream_bias: DreamBias | None = None,
    stock: Callable = sdpa_attention_forward,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: stock attention unless this layer has selected heads."""
    heads = dream_bias.heads.get(module.layer_idx) if dream_bias is not None else None
    if not heads:
        return stock(module, query, key, value, attention_mask, **kwargs)
    output = biased_attention(
        module,
        query,
        key,
        value,
        attention_mask,
        dream_bias,
        tuple(heads),
        scaling=kwargs.get("scaling"),
        dropout=kwargs.get("dropout", 0.0),
    )
    return output, None


class _AsFlashAttention2:
    """The attention module as transformers' ``flash_attention_forward`` must see it.

    That function looks the flash kernel up by ``module.config._attn_implementation``, which here is our
    own name (``dream_fa2``); this view reports ``flash_attention_2`` and forwards everything else.
    """

    def __init__(self, module: torch.nn.Module):
        self._module = module
        self.config = SimpleNamespace(_attn_implementation="flash_attention_2")

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def stock_flash_attention(module: torch.nn.Module, *args, **kwargs):
    """transformers' ``flash_attention_forward`` for the layers without selected heads."""
    from transformers.integrations.flash_attention import flash_attention_forward

    return flash_attention_forward(_AsFlashAttention2(module), *args, **kwargs)


def register_dream_attention() -> list[str]:
    """Register ``dream_sdpa`` and ``dream_fa2`` (flash-attn is imported only when a layer runs); return
    the names."""
    AttentionInterface.register(DREAM_SDPA, dream_attention_forward)
    AttentionMaskInterface.register(DREAM_SDPA, sdpa_mask)
    AttentionInterface.register(
        DREAM_FLASH, functools.partial(dream_attention_forward, stock=stock_flash_attention)
    )
    AttentionMaskInterface.register(DREAM_FLASH, flash_attention_mask)
    return [DREAM_SDPA, DREAM_FLASH]


def attention_name(backend: str) -> str:
    """``sdpa`` → ``dream_sdpa``; ``flash`` → ``dream_fa2`` (needs flash-attn and a GPU: :func:`flash_attn_available`)."""
    register_dream_attention()
    wanted = {"sdpa": DREAM_SDPA, "flash": DREAM_FLASH}.get(backend)
    if wanted is None:
        raise ValueError(f"DREAM attention backend must be 'sdpa' or 'flash', got '{backend}'")
    if wanted == DREAM_FLASH and not flash_attn_available():
        raise RuntimeError(
            "attention backend 'flash' needs the flash-attn package and a CUDA GPU; use 'sdpa'"
        )
    return wanted
