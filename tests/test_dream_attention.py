"""The registered DREAM attention function: stock outside the selected heads, exact bias inside them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_modules.dream.attention import (
    DREAM_SDPA,
    DreamBias,
    attention_name,
    dream_attention_forward,
)
from lightning_modules.losses.dream import document_bias, key_position_bias
from tests.dream_fixtures import WORDS, model, tokenizer, two_question_batch  # noqa: F401 (pytest fixtures)


def fake_layer(layer_idx: int, groups: int = 2):
    return SimpleNamespace(layer_idx=layer_idx, num_key_value_groups=groups, is_causal=True, training=False)


def causal_mask(batch: int, q: int, k: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    positions = torch.arange(k - q, k)[:, None] >= torch.arange(k)[None, :]
    mask = positions[None, None].expand(batch, 1, q, k).clone()
    if padding is not None:
        mask &= padding[:, None, None, :].bool()
    return mask


def reference_attention(query, key, value, allowed, bias4, scale):
    """Eager attention with an explicit [B, H, Q, K] additive bias (repeat_kv by interleaving)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    logits = query @ key.transpose(-1, -2) * scale + bias4
    logits = logits.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(logits, -1) @ value).transpose(1, 2)


def random_qkv(batch=2, heads=4, kv_heads=2, q=7, k=7, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, q, dim, generator=g),
        torch.randn(batch, kv_heads, k, dim, generator=g),
        torch.randn(batch, kv_heads, k, dim, generator=g),
    )


def test_selected_heads_get_exactly_the_bias_on_rows_after_the_documents():
    query, key, value = random_qkv()
    padding = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    allowed = causal_mask(2, 7, 7, padding)
    key_bias = torch.tensor([[0.0, 1.0, 1.0, -2.0], [0.5, 0.5, -1.0, -1.0]])  # the 4 document positions
    context = 4
    dream = DreamBias(key_bias=key_bias, context_length=context, heads={1: (0, 3)})
    out, _ = dream_attention_forward(fake_layer(1), query, key, value, allowed, dream_bias=dream, scaling=0.5)

    bias4 = torch.zeros(2, 4, 7, 7)
    for head in (0, 3):
        bias4[:, head, context:, :context] = key_bias[:, None, :]
    expected = reference_attention(query, key, value, allowed, bias4, 0.5)
    real = padding.bool()  # padding query rows are arbitrary (never used)
    assert torch.allclose(out[real], expected[real], atol=1e-5)


def test_unselected_heads_and_layers_are_untouched_by_the_scores():
    query, key, value = random_qkv(seed=1)
    allowed = causal_mask(2, 7, 7)
    low = DreamBias(torch.zeros(2, 4), 4, {1: (2,)})
    high = DreamBias(torch.tensor([[3.0, -3.0, 1.0, 0.0]] * 2), 4, {1: (2,)})
    out_low, _ = dream_attention_forward(
        fake_layer(1), query, key, value, allowed, dream_bias=low, scaling=0.3
    )
    out_high, _ = dream_attention_forward(
        fake_layer(1), query, key, value, allowed, dream_bias=high, scaling=0.3
    )
    assert torch.equal(out_low[:, :, [0, 1, 3]], out_high[:, :, [0, 1, 3]])
    assert not torch.allclose(out_low[:, 4:, 2], out_high[:, 4:, 2])
    assert torch.equal(out_low[:, :4], out_high[:, :4])  # the document rows themselves are never biased
    # a layer without selected heads runs the stock SDPA function bit for bit
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    stock, _ = sdpa_attention_forward(fake_layer(0), query, key, value, allowed, scaling=0.3)
    other, _ = dream_attention_forward(
        fake_layer(0), query, key, value, allowed, dream_bias=high, scaling=0.3
    )
    assert torch.equal(stock, other)


def lm_batch(tokenizer):
    return two_question_batch(tokenizer, ["question which city ? answer", "what river ? answer"])


def lm_logits(model, inputs, key_bias, heads):
    dream = DreamBias(key_bias, inputs.context_length, heads)
    return model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        dream_bias=dream,
    ).logits


def test_equal_scores_reproduce_the_stock_model_within_1e_6(model, tokenizer):
    inputs = lm_batch(tokenizer)
    heads = {0: (0, 1, 2, 3), 1: (1,), 2: (0, 3)}
    bias = key_position_bias(document_bias(torch.full((2, 3), 0.42), 0.1), inputs.document_index)
    dream = lm_logits(model, inputs, bias, heads)
    model.set_attn_implementation("sdpa")
    try:
        stock = model(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids
        ).logits
    finally:
        model.set_attn_implementation(DREAM_SDPA)
    real = inputs.attention_mask.bool()
    assert (dream[real] - stock[real]).abs().max() < 1e-6


def test_different_scores_change_only_the_positions_after_the_documents(model, tokenizer):
    inputs = lm_batch(tokenizer)
    heads = {1: (0, 2)}
    flat = lm_logits(model, inputs, torch.zeros(inputs.document_index.shape), heads)
    scores = key_position_bias(
        document_bias(torch.tensor([[0.9, 0.1, -0.5], [0.0, 0.8, 0.2]]), 0.1), inputs.document_index
    )
    biased = lm_logits(model, inputs, scores, heads)
    P = inputs.context_length
    assert torch.equal(flat[:, :P], biased[:, :P])
    assert (flat[:, P:] - biased[:, P:]).abs().max() > 1e-3


def test_no_attention_to_padding_or_future_tokens(model, tokenizer):
    inputs = lm_batch(tokenizer)
    heads = {0: (0, 1), 2: (3,)}
    scores = key_position_bias(
        document_bias(torch.tensor([[0.9, 0.1, -0.5], [0.0, 0.8, 0.2]]), 0.1), inputs.document_index
    )
    logits = lm_logits(model, inputs, scores, heads)
    padding = ~inputs.attention_mask.bool()
    assert padding.any(), "the batch must contain padding for this test"
    changed = inputs.input_ids.clone()
    changed[padding] = 7  # different token ids at padding positions
    changed_future = changed.clone()
    changed_future[0, -1] = 9  # the last position of row 0 is a real target token
    assert inputs.attention_mask[0, -1] == 1
    for ids in (changed, changed_future):
        perturbed = DreamBias(scores, inputs.context_length, heads)
        out = model(
            input_ids=ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            dream_bias=perturbed,
        ).logits
        keep = inputs.attention_mask.bool().clone()
        keep[0, -1] = False  # only earlier positions must be unaffected by a future token
        assert torch.allclose(out[keep], logits[keep], atol=1e-5)


def test_unknown_backend_is_reported():
    """(The flash backend itself: tests/test_flash_attention_standin.py.)"""
    with pytest.raises(ValueError, match="sdpa' or 'flash"):
        attention_name("eager")


def test_flash_view_reports_the_stock_kernel_name_and_forwards_the_rest(model):
    from lightning_modules.dream.attention import _AsFlashAttention2

    layer = model.model.layers[1].self_attn
    view = _AsFlashAttention2(layer)
    assert view.config._attn_implementation == "flash_attention_2"
    assert view.layer_idx == 1 and view.is_causal and next(view.modules()) is layer
