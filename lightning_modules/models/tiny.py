"""Tiny randomly initialised models of each family, with in-memory word-level tokenizers.

Used by unit tests and by ``debug=tiny``, which swaps every model of an experiment for the tiny model
of the same family so that any experiment (cluster ones included) smoke-runs offline in seconds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

DECODER_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
_WORD = re.compile(r"\w+|[^\w\s]")


def vocabulary_from_texts(texts: Iterable[str], size: int = 2000) -> list[str]:
    """The ``size`` most frequent lower-cased words and punctuation marks, in a stable order."""
    counts = Counter(tok for text in texts for tok in _WORD.findall(text.lower()))
    return [word for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def word_level_tokenizer(words: list[str], family: str) -> PreTrainedTokenizerFast:
    """An in-memory word-level tokenizer: ``family`` is ``"decoder"`` (llama-style) or ``"encoder"`` (BERT-style)."""
    specials = DECODER_SPECIALS if family == "decoder" else ENCODER_SPECIALS
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    unk = "<unk>" if family == "decoder" else "[UNK]"
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    if family == "encoder":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=512,
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        model_max_length=2048,
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "</s>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(
    family: str, vocab_size: int, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None
) -> PreTrainedModel:
    """A tiny random model: ``llama`` / ``qwen2`` (causal LM) or ``bert`` (encoder)."""
    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
            pad_token_id=0,
        )
        return BertModel(config)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    if tokenizer is not None:
        common.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    raise ValueError(f"unknown tiny model family '{family}' (choose from: llama, qwen2, bert)")
