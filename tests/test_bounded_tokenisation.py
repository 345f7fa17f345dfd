"""Texts are cut to a bound derived from max_length before tokenising: a 10 MB line costs what a normal
line costs, and the tokens equal the first max_length tokens of the whole text (issue 19 item 4)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lightning_modules.models.embedder import Embedder
from lightning_modules.models.tokenization import plain_token_ids
from retrieval.text import bounded_token_ids, character_bound, cut_text

WORDS = "the river flows through the old city while a quiet bridge watches over every boat".split()


def long_line(megabytes: float) -> str:
    words = (WORDS[i % len(WORDS)] for i in range(int(megabytes * 1e6) // 5))
    return " ".join(words)


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (the GPT-2/Qwen/SmolLM family's kind) trained on the words."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        [" ".join(WORDS)] * 50, trainers.BpeTrainer(vocab_size=300, show_progress=False)
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend)


class CountingTokenizer:
    """Wraps a tokenizer's ``__call__`` and records the longest text it was handed."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest, *(len(t) for t in ([texts] if isinstance(texts, str) else texts))])
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_the_embedder_never_tokenises_more_than_the_bound(tiny_bert_path):
    embedder = Embedder(tiny_bert_path, max_length=32)
    counting = CountingTokenizer(embedder.text_tokenizer.tokenizer)
    embedder.text_tokenizer.tokenizer = counting
    huge, normal = long_line(10), long_line(0.001)
    ids = embedder.text_tokenizer.token_ids([huge, normal], "document")
    assert counting.longest <= character_bound(32), "the 10 MB line is cut before tokenising"
    assert ids[0] == ids[1] == embedder.tokenizer(normal, truncation=True, max_length=32)["input_ids"]
    assert len(ids[0]) == 32


@pytest.mark.parametrize("max_tokens", [1, 7, 64])
def test_bounded_ids_equal_the_whole_texts_first_tokens(max_tokens):
    tokenizer = byte_level_bpe()
    texts = [long_line(1), "a short text", "", "x" * 50_000, "punctuation, too: " + long_line(0.2)]
    whole = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    assert plain_token_ids(tokenizer, texts, max_tokens) == whole


def test_a_cut_row_with_long_tokens_is_retokenised_with_a_larger_bound():
    calls: list[int] = []

    def encode(batch: list[str]) -> list[list[str]]:  # one token per character run of "=" or per word
        calls.append(max(len(t) for t in batch))
        return [t.replace("=" * 100, "= ").split() for t in batch]

    text = ("=" * 100) * 40 + " end"
    assert bounded_token_ids(encode, [text], 30) == [encode([text])[0][:30]]
    assert calls[0] <= character_bound(30) < max(calls[1:]), "retried with a larger bound"
    assert cut_text("aaa bbb ccc", 9) == "aaa bbb" and cut_text("abcdefghij", 4) == "abcd"
