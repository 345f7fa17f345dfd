"""Fixtures shared by the DREAM tests: a tiny Llama with the DREAM attention function and its tokenizer."""

from __future__ import annotations

import pytest

from lightning_modules.dream.attention import DREAM_SDPA, register_dream_attention
from lightning_modules.models.tiny import tiny_model, word_level_tokenizer

WORDS = (
    "the a of paris france capital city is river in which what question answer passage seine flows".split()
)


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(WORDS, "decoder")


@pytest.fixture(scope="module")
def model(tokenizer):
    register_dream_attention()
    lm = tiny_model("llama", vocab_size=len(tokenizer), tokenizer=tokenizer)
    lm.set_attn_implementation(DREAM_SDPA)
    return lm.eval().requires_grad_(False)
