"""Texts bounded before tokenisation: a tokenizer never receives more characters than a row can use.

A tokenizer that truncates *after* tokenising still reads the whole text: one 10 MB line costs seconds and
gigabytes although only ``max_tokens`` tokens survive. :func:`bounded_token_ids` cuts every text to
``max_tokens × CHARS_PER_TOKEN`` characters first (at a whitespace when there is one in the last half of
the bound, so no word is split), tokenises, and re-tokenises with a larger bound the rare row that was cut
yet came out shorter than ``max_tokens`` (very long tokens). So the result is the first ``max_tokens``
tokens of the whole text, at the cost of a bounded text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

CHARS_PER_TOKEN = 12  # generous: English tokenizers average about 4 characters per token


def character_bound(max_tokens: int) -> int:
    """How many characters a text keeps before tokenising for at most ``max_tokens`` tokens."""
    return max(max_tokens, 1) * CHARS_PER_TOKEN


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at the last whitespace of the second half if any."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return head[:space] if space >= limit // 2 else head


def bounded_token_ids(
    encode: Callable[[list[str]], list[list[int]]], texts: Sequence[str], max_tokens: int
) -> list[list[int]]:
    """``[encode([t])[0][:max_tokens] for t in texts]``, giving ``encode`` bounded texts only.

    Args:
        encode: a batch tokenizer call returning token ids per text (it may truncate itself).
        texts: the texts.
        max_tokens: tokens kept per text.

    Example: ``bounded_token_ids(lambda b: [t.split() for t in b], ["a b c " * 10**6], 2)`` returns
    ``[["a", "b"]]`` and the lambda never sees more than ``character_bound(2)`` characters.
    """
    limit = character_bound(max_tokens)
    rows = [row[:max_tokens] for row in encode([cut_text(t, limit) for t in texts])] if texts else []
    short = [i for i, t in enumerate(texts) if len(t) > limit and len(rows[i]) < max_tokens]
    while short:  # a cut row with too few tokens: its tokens are long; try a larger bound
        limit *= 4
        again = encode([cut_text(texts[i], limit) for i in short])
        for i, row in zip(short, again):
            rows[i] = row[:max_tokens]
        short = [i for i in short if len(texts[i]) > limit and len(rows[i]) < max_tokens]
    return rows
