"""Memory-saving paths give the same numbers: chunked candidate encoding (DREAM), the chunked
full-vocabulary reconstruction loss and recomputed frozen-LM layers (LLM2Vec-Gen)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from lightning_modules.losses.llm2vec_gen import chunked_reconstruction_loss, reconstruction_loss
from lightning_modules.models.chunked import checkpointed_layers, embed_in_chunks
from tests.test_dream_module import make_module, tiny_batch


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_reconstruction_loss_equals_the_unchunked_one(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    head = nn.Linear(5, 11, bias=False).double()
    targets = torch.randint(0, 11, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    reference = reconstruction_loss(head(hidden), targets, mask)
    expected = torch.autograd.grad(reference, [hidden, head.weight])
    loss = chunked_reconstruction_loss(hidden, head, targets, mask, chunk)
    grads = torch.autograd.grad(loss, [hidden, head.weight])
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)  # token_nll works in float32
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_reconstruction_loss_refuses_bad_input():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_reconstruction_loss(
            torch.zeros(1, 2, 3), nn.Linear(3, 4), torch.zeros(1, 2).long(), torch.ones(1, 2), 0
        )
    with pytest.raises(ValueError, match="no response token"):
        chunked_reconstruction_loss(
            torch.zeros(1, 2, 3), nn.Linear(3, 4), torch.zeros(1, 2).long(), torch.zeros(1, 2), 1
        )


def test_embed_in_chunks_gives_the_same_embeddings_and_gradients_with_dropout():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Embedding(20, 6), nn.Dropout(0.3), nn.Linear(6, 4))

    def embed(ids, mask):
        return (layer(ids) * mask[..., None]).mean(dim=1)

    ids, mask = torch.randint(0, 20, (7, 5)), torch.ones(7, 5)
    torch.manual_seed(1)
    whole = embed(ids, mask)
    whole.square().sum().backward()
    expected = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    torch.manual_seed(1)
    chunked = embed_in_chunks(embed, ids, mask, 3)
    chunked.square().sum().backward()
    torch.testing.assert_close(chunked, whole)
    for parameter, want in zip(layer.parameters(), expected):
        torch.testing.assert_close(parameter.grad, want)


def test_dream_chunked_candidate_encoding_gives_the_same_loss_and_gradients():
    results = []
    for chunk in (0, 2):
        torch.manual_seed(0)
        module = make_module(encode_chunk_size=chunk)
        module.train()
        loss = module.training_step(tiny_batch(), 0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.embedder.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (loss, grads), (chunked_loss, chunked_grads) = results
    torch.testing.assert_close(chunked_loss, loss)
    assert grads.keys() == chunked_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(chunked_grads[name], grads[name], rtol=1e-4, atol=1e-6)


def test_checkpointed_frozen_layers_give_the_same_gradients_and_are_restored():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=30,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float64).requires_grad_(False).eval()
    inputs = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    grads = []
    for enabled in (False, True):
        with checkpointed_layers(lm, enabled):
            hidden = lm.base_model(inputs_embeds=inputs, use_cache=False).last_hidden_state
        grads.append(torch.autograd.grad(hidden.square().sum(), inputs)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
    layer = lm.model.layers[0]
    assert not layer.training and not layer.gradient_checkpointing
