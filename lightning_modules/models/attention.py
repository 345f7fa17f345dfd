"""Bidirectional attention for decoder LMs, through transformers' own extension points (no modeling forks).

LLM2Vec (BehnamGhader et al., 2024) turns a causal LM into a text encoder by letting every token attend to
every non-padding token (docs/llm2vec_gen.md, "The unsupervised teacher"). transformers 5 builds the mask
through ``AttentionMaskInterface`` and runs attention through ``AttentionInterface``, both keyed by the
model's ``attn_implementation``; this module registers one name, :data:`BIDIRECTIONAL_ATTENTION`, for both:

- mask: PyTorch SDPA's mask built from the padding mask alone (the causal/sliding mask function the model
  asks for is replaced by the bidirectional one; no mask at all when nothing is padded);
- attention: PyTorch SDPA with ``is_causal=False`` (otherwise SDPA applies its own causal mask whenever the
  mask is skipped).

Load a model with ``attn_implementation=attn_implementation_for("bidirectional")``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask

BIDIRECTIONAL_ATTENTION = "lsr_bidirectional_sdpa"
ATTENTIONS = ("causal", "bidirectional")


def bidirectional_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that never applies a causal mask of its own."""
    kwargs["is_causal"] = False
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def bidirectional_sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's mask with the bidirectional mask function: only padded keys are hidden."""
    kwargs.update(
        mask_function=bidirectional_mask_function,
        allow_is_causal_skip=False,
        allow_is_bidirectional_skip=True,
        local_size=None,
    )
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(BIDIRECTIONAL_ATTENTION, bidirectional_sdpa_attention)
AttentionMaskInterface.register(BIDIRECTIONAL_ATTENTION, bidirectional_sdpa_mask)


def attn_implementation_for(attention: str, default: str | None = None) -> str | None:
    """The ``attn_implementation`` to load a model with for ``attention`` (``causal`` keeps ``default``)."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown attention '{attention}' (choose from: {', '.join(ATTENTIONS)})")
    return BIDIRECTIONAL_ATTENTION if attention == "bidirectional" else default
