"""The DREAM LM loss: target tokens only, and the no-grad document prefix with reused keys/values is exact."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.dream.inputs import IGNORE_INDEX, block_diagonal_mask, build_dream_inputs
from lightning_modules.losses.dream import document_bias, dream_lm_loss, key_position_bias, mean_target_nll
from tests.dream_fixtures import WORDS, model, tokenizer, two_question_batch  # noqa: F401 (pytest fixtures)


def make_inputs(tokenizer):
    return two_question_batch(tokenizer, ["which city ? answer", "what river ? answer"])


def test_layout_left_pads_documents_and_labels_only_the_target(tokenizer):
    inputs = make_inputs(tokenizer)
    P = inputs.context_length
    assert inputs.attention_mask[:, P - 1].all(), "every row's documents end at the same position"
    assert (inputs.document_index[inputs.attention_mask[:, :P] == 0] == -1).all()
    # row 0's documents are cut to 5 tokens each: 5 + 5 + 2 positions
    assert inputs.document_index[0].tolist().count(0) == 5 and inputs.document_index[0].tolist().count(2) == 2
    targets = [[t for t in row if t != IGNORE_INDEX] for row in inputs.labels.tolist()]
    assert targets == [
        tokenizer("paris", add_special_tokens=False)["input_ids"],
        tokenizer("the seine", add_special_tokens=False)["input_ids"],
    ]
    assert inputs.position_ids[1, P - 1] == inputs.attention_mask[1, :P].sum() - 1


def test_a_bos_token_starts_every_row_unbiased_and_visible_to_every_document(tokenizer):
    bos = tokenizer.bos_token_id
    assert bos is not None
    documents = [["paris is the capital", "france"], ["the seine flows"]]
    prompts, targets = ["which city", "which river"], ["paris", "seine"]
    plain = build_dream_inputs(tokenizer, documents, prompts, targets)
    inputs = build_dream_inputs(tokenizer, documents, prompts, targets, bos_token_id=bos)
    P = inputs.context_length
    assert P == plain.context_length + 1
    for row in range(2):
        start = int((inputs.attention_mask[row, :P] == 0).sum())  # left padding ends here
        assert inputs.input_ids[row, start] == bos and inputs.document_index[row, start] == -1
        assert inputs.position_ids[row, start] == 0
        assert inputs.input_ids[row, start + 1 :].tolist() == plain.input_ids[row, start:].tolist()
    bias = key_position_bias(torch.tensor([[2.0, 3.0], [4.0, 0.0]]), inputs.document_index)
    assert (bias[inputs.input_ids[:, :P] == bos] == 0).all(), "the sequence start carries no bias"
    mask = block_diagonal_mask(inputs)[:, 0]
    start = int((inputs.attention_mask[0, :P] == 0).sum())
    documents_of_row0 = (inputs.document_index[0] >= 0).nonzero()[:, 0]
    assert mask[0][documents_of_row0, start].all(), "block-diagonal documents still see the BOS"


def test_empty_prompt_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="row 0: the prompt is empty"):
        build_dream_inputs(tokenizer, [["paris"]], [""], ["paris"])


def test_mean_target_nll_matches_hand_computed_value():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    expected = -torch.log_softmax(torch.tensor([0.0, 1.0, 0.0]), 0)[1]
    assert torch.allclose(mean_target_nll(logits, labels), expected)


@pytest.mark.parametrize("block_diagonal", [False, True])
def test_no_grad_document_prefix_gives_the_same_loss_and_gradients(model, tokenizer, block_diagonal):
    inputs = make_inputs(tokenizer)
    heads = {0: (1, 2), 1: (0, 1, 2, 3)}
    results = []
    for reuse in (False, True):
        cosines = torch.tensor([[0.9, 0.1, -0.5], [0.0, 0.8, 0.2]], requires_grad=True)
        key_bias = key_position_bias(document_bias(cosines, 0.1), inputs.document_index)
        loss = dream_lm_loss(
            model, inputs, key_bias, heads, reuse_document_cache=reuse, block_diagonal=block_diagonal
        ).loss
        loss.backward()
        results.append((loss.detach(), cosines.grad.clone()))
    (full_loss, full_grad), (cached_loss, cached_grad) = results
    assert torch.allclose(full_loss, cached_loss, atol=1e-6)
    assert full_grad.abs().sum() > 0
    assert torch.allclose(full_grad, cached_grad, atol=1e-6)


@pytest.mark.parametrize("reuse", [False, True])
def test_unbiased_nll_is_the_loss_without_bias_and_carries_no_gradient(model, tokenizer, reuse):
    inputs = make_inputs(tokenizer)
    heads = {0: (1, 2)}
    cosines = torch.tensor([[0.9, 0.1, -0.5], [0.0, 0.8, 0.2]], requires_grad=True)
    key_bias = key_position_bias(document_bias(cosines, 0.1), inputs.document_index)
    biased = dream_lm_loss(model, inputs, key_bias, heads, reuse, with_unbiased_nll=True)
    stock = dream_lm_loss(model, inputs, torch.zeros_like(key_bias), heads, reuse)
    assert stock.unbiased_nll is None and not biased.unbiased_nll.requires_grad
    assert torch.allclose(biased.unbiased_nll, stock.loss, atol=1e-6)
    assert torch.allclose(biased.loss, dream_lm_loss(model, inputs, key_bias, heads, reuse).loss, atol=1e-6)
    assert not torch.allclose(biased.loss, stock.loss), "the bias changes the NLL"


def test_block_diagonal_documents_do_not_see_each_other(model, tokenizer):
    inputs = make_inputs(tokenizer)
    mask = block_diagonal_mask(inputs)[:, 0]
    owner = inputs.document_index
    P = inputs.context_length
    row = 0
    first, second = (owner[row] == 0).nonzero()[:, 0], (owner[row] == 1).nonzero()[:, 0]
    assert not mask[row][second][:, first].any()  # document 1 never attends to document 0
    assert mask[row][P:, first].all() and mask[row][P:, second].all()  # the prompt sees both

    # hidden states of document 1 do not depend on the tokens of document 0
    def hidden(ids):
        out = model(
            input_ids=ids,
            attention_mask=block_diagonal_mask(inputs),
            position_ids=inputs.position_ids,
            output_hidden_states=True,
        )
        return out.hidden_states[-1][row, second]

    changed = inputs.input_ids.clone()
    changed[row, first] = 8
    assert torch.allclose(hidden(inputs.input_ids), hidden(changed), atol=1e-6)


def test_recomputed_layers_reuse_the_document_cache_without_growing_it(tokenizer):
    """Activation checkpointing (non-reentrant, as FSDP applies it) recomputes each decoder layer in backward.
    The suffix pass must not append its keys to the document cache, or the recompute sees ``P + 2S`` keys."""
    import copy

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from transformers.modeling_layers import GradientCheckpointingLayer

    from lightning_modules.dream.attention import DREAM_SDPA, register_dream_attention
    from lightning_modules.dream.lm_passes import DocumentPrefixCache, encode_documents_prefix
    from lightning_modules.fsdp import disable_implicit_caches
    from lightning_modules.models.tiny import tiny_model

    register_dream_attention()
    plain = tiny_model("llama", vocab_size=len(tokenizer), tokenizer=tokenizer)
    plain.set_attn_implementation(DREAM_SDPA)
    plain.eval().requires_grad_(False)
    checkpointed = copy.deepcopy(plain)
    layers = {n for n, m in checkpointed.named_modules() if isinstance(m, GradientCheckpointingLayer)}
    assert disable_implicit_caches(checkpointed, layers) == [""]
    apply_activation_checkpointing(checkpointed, check_fn=lambda m: isinstance(m, GradientCheckpointingLayer))
    inputs = make_inputs(tokenizer)
    results = []
    for lm in (plain, checkpointed):
        cosines = torch.tensor([[0.9, 0.1, -0.5], [0.0, 0.8, 0.2]], requires_grad=True)
        key_bias = key_position_bias(document_bias(cosines, 0.1), inputs.document_index)
        loss = dream_lm_loss(lm, inputs, key_bias, {0: (1, 2), 1: (0, 1, 2, 3)}).loss
        loss.backward()
        results.append((loss.detach(), cosines.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    cache = encode_documents_prefix(checkpointed, inputs)
    assert isinstance(cache, DocumentPrefixCache) and cache.get_seq_length() == inputs.context_length
