"""Fixtures shared by the DREAM tests: a tiny Llama with the DREAM attention function and its tokenizer."""

from __future__ import annotations

import pytest

from lightning_modules.dream.attention import DREAM_SDPA, register_dream_attention
from lightning_modules.dream.inputs import DreamInputs, build_dream_inputs
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


DOCUMENTS = [
    ["paris is the capital of france", "the seine flows in paris", "a river"],
    ["what city", "the river of france", "answer"],
]
TARGETS = ["paris", "the seine"]


def two_question_batch(tokenizer, prompts: list[str]) -> DreamInputs:
    """Two questions × three documents (≤ 5 tokens each) with their answers as targets."""
    return build_dream_inputs(tokenizer, DOCUMENTS, prompts, TARGETS, max_document_tokens=5)
