"""Token ids of the frozen LM's prompt for a text: ``chat template(user: instruction + text)`` + assistant turn.

The text alone is truncated (never the template around it), so the assistant header, where the special
tokens and the response start, always survives. Without a chat template the prompt is plain
``instruction + text``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from lightning_modules.models.tokenization import plain_token_ids

_SENTINEL = "\u0000LSR_TEXT\u0000"


class PromptBuilder:
    """Builds left-padded prompt ids for queries and documents.

    Args:
        tokenizer: the frozen LM's tokenizer.
        use_chat_template: wrap the text in the tokenizer's chat template (when it has one).
        max_text_tokens: truncation length of ``instruction + text`` in tokens.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, use_chat_template: bool = True, max_text_tokens: int = 128
    ):
        if max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.uses_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        if self.uses_chat_template:
            rendered = tokenizer.apply_chat_template(  # enable_thinking: Qwen3's templates (others ignore it)
                [{"role": "user", "content": _SENTINEL}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,  # as the reference: a direct response, no <think> reasoning first
            )
            prefix, sep, suffix = rendered.partition(_SENTINEL)
            if not sep:
                raise ValueError(
                    "the tokenizer's chat template drops the user message; set use_chat_template=false"
                )
            self.prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            self.suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        else:
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            self.prefix_ids, self.suffix_ids = bos, []

    def ids(self, text: str, instruction: str = "") -> list[int]:
        body = plain_token_ids(self.tokenizer, [instruction + text], self.max_text_tokens)[0]
        return [*self.prefix_ids, *body, *self.suffix_ids]

    def batch(self, texts: Sequence[str], instruction: str = "") -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` / ``attention_mask`` ``[B, T]`` (the prompt ends at the right edge)."""
        return left_pad([self.ids(t, instruction) for t in texts], pad_id=pad_token_id(self.tokenizer))


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the frozen LM's tokenizer has neither a pad nor an EOS token")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, T], mask [B, T] bool)`` with each row starting at column 0."""
    width = max(max(len(r) for r in rows), 1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask
