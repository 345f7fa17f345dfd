"""The recipe's models built from their architecture numbers, on ``meta`` (planning) or CPU (validation),
configured as the training code configures them (dtype, LoRA, gradient checkpointing, frozen, eval)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel, masking_utils

from bench.plan.architectures import architecture
from lightning_modules.models.embedder import DEFAULT_LORA
from lightning_modules.models.frozen_lm import parse_dtype


@contextmanager
def no_packed_sequences_on_meta():
    """transformers looks for packed sequences in the position ids (a value-dependent check that meta tensors
    cannot answer); the planner's batches are one sequence per row, so the answer is "none"."""
    original = masking_utils.find_packed_sequence_indices

    def find(position_ids: torch.Tensor):
        return None if position_ids.device.type == "meta" else original(position_ids)

    masking_utils.find_packed_sequence_indices = find
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


class FlashLikeAttention(torch.autograd.Function):
    """Attention as fused kernels (flash / memory-efficient on GPU, flash on CPU) store it for backward:
    ``q, k, v``, the output and the row log-sum-exp, never the ``[L, L]`` weights. On meta tensors PyTorch
    picks the math path, which saves the weights; this stands in for the kernel there (shapes only)."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@contextmanager
def fused_attention_on_meta():
    """``F.scaled_dot_product_attention`` on meta tensors counted as a fused kernel (:class:`FlashLikeAttention`)."""
    original = F.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):
        if query.device.type != "meta":
            return original(query, key, value, *args, **kwargs)
        return FlashLikeAttention.apply(query, key, value)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def build_embedder(spec: dict[str, Any], device: str, tiny: bool) -> PreTrainedModel:
    """The trainable embedder's backbone as ``lightning_modules.models.embedder.Embedder`` builds it."""
    config = architecture(spec["name_or_path"], tiny)
    with torch.device(device):
        backbone = AutoModel.from_config(
            config, dtype=parse_dtype(spec.get("dtype", "float32")), attn_implementation="sdpa"
        )
    if spec.get("gradient_checkpointing"):
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.get("lora") is not None:
        from peft import LoraConfig, get_peft_model

        backbone = get_peft_model(backbone, LoraConfig(**{**DEFAULT_LORA, **dict(spec["lora"])}))
    return backbone.train()


def build_frozen_lm(spec: dict[str, Any], device: str, tiny: bool) -> PreTrainedModel:
    """The frozen causal LM as ``lightning_modules.models.frozen_lm.load_frozen_lm`` loads it."""
    config = architecture(spec["name_or_path"], tiny)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=parse_dtype(spec.get("dtype", "float32")), attn_implementation="sdpa"
        )
    return model.requires_grad_(False).eval()


def pooled(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooling of unpadded rows (the planner's batches are full-length, the worst case)."""
    hidden = hidden.float()
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        return hidden[:, -1]
    return hidden.mean(dim=1)


def embed_fn(backbone: nn.Module, spec: dict[str, Any]):
    """``(ids, mask) -> [N, H]`` L2-normalised embeddings, like ``Embedder.forward``."""
    pooling = spec.get("pooling", "mean")

    def embed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = backbone(input_ids=input_ids).last_hidden_state
        return torch.nn.functional.normalize(pooled(hidden, pooling), dim=-1)

    return embed


def token_ids(rows: int, length: int, device: str, vocab_size: int) -> torch.Tensor:
    if device == "meta":
        return torch.zeros(rows, length, dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(rows * 1000 + length)
    return torch.randint(0, vocab_size, (rows, length), generator=generator)
