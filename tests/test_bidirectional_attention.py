"""Bidirectional attention through transformers' AttentionInterface / AttentionMaskInterface registration:
every token sees every non-padding token, padding stays invisible, the causal default is untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from lightning_modules.models.attention import attn_implementation_for
from lightning_modules.models.embedder import Embedder

IDS = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2"])
def test_bidirectional_equals_eager_attention_under_a_full_padding_mask(family):
    from lightning_modules.models.registry import resolve_model_path

    path = resolve_model_path(family)
    bidirectional = AutoModel.from_pretrained(
        path, attn_implementation=attn_implementation_for("bidirectional")
    )
    eager = AutoModel.from_pretrained(path, attn_implementation="eager")
    full = torch.zeros(2, 1, 5, 5)
    full[1, :, :, 4] = torch.finfo(
        torch.float32
    ).min  # the padded key is hidden from every query, nothing else
    with torch.no_grad():
        ours = bidirectional.eval()(input_ids=IDS, attention_mask=MASK).last_hidden_state
        reference = eager.eval()(input_ids=IDS, attention_mask=full).last_hidden_state
        unpadded = bidirectional(
            input_ids=IDS[:1]
        ).last_hidden_state  # no mask at all: SDPA's is_causal stays off
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(unpadded, reference[:1], atol=1e-5)


def test_embedder_attention_option_changes_what_early_tokens_see(tiny_llama_path):
    causal = Embedder(tiny_llama_path, pooling="mean", normalize=False).eval()
    bidirectional = Embedder(
        tiny_llama_path, pooling="mean", normalize=False, attention="bidirectional"
    ).eval()
    with torch.no_grad():
        first_causal = [causal.backbone(input_ids=IDS[:, :k]).last_hidden_state[:, 0] for k in (2, 5)]
        first_bi = [bidirectional.backbone(input_ids=IDS[:, :k]).last_hidden_state[:, 0] for k in (2, 5)]
        padded = bidirectional.encode(["the film", "the film was made in a city"], "document")
        alone = bidirectional.encode(["the film"], "document")
    assert torch.allclose(first_causal[0], first_causal[1], atol=1e-6)  # later tokens are invisible
    assert not torch.allclose(first_bi[0], first_bi[1], atol=1e-3)  # later tokens are seen
    assert torch.allclose(padded[0], alone[0], atol=1e-5)  # padding is not
    assert bidirectional.export_config()["attention"] == "bidirectional"


def test_unknown_attention_and_bidirectional_export_are_refused(tiny_llama_path, tmp_path):
    with pytest.raises(ValueError, match="unknown attention 'sideways'"):
        Embedder(tiny_llama_path, attention="sideways")
    embedder = Embedder(tiny_llama_path, attention="bidirectional")
    with pytest.raises(NotImplementedError, match="causal attention"):
        embedder.save_pretrained(tmp_path / "export")


def test_an_empty_text_embeds_as_the_eos_token_alone(tiny_llama_path):
    embedder = Embedder(tiny_llama_path, pooling="mean", normalize=False).eval()
    eos = embedder.tokenizer.eos_token
    empty, just_eos = embedder.encode(["", eos], "document")
    assert torch.isfinite(empty).all() and torch.allclose(empty, just_eos, atol=1e-6)
