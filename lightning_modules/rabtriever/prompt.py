"""The generative reranker's prompt: document first, then the query, then a question whose answer is a token.

Teacher input  = prefix + document part + query part + suffix   (``[doc; query; prompt]``)
Student document input = prefix + document part                 (``Z_d``: its last states)
Student query input    = prefix + query part + suffix           (``h_q``: the answer-position state)

Because the LM is causal and the document comes first, the teacher's states over the document part are
exactly the student's document states: the student only loses what the query positions would have read.
With ``chat=True`` the prefix and suffix come from the tokenizer's own chat template (a user turn and
the assistant header), so no model family's special strings are written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from lightning_modules.models.tokenization import plain_token_ids
from lightning_modules.settings import Settings, SettingsError

CHAT_MARK = "\x00RABTRIEVER\x00"
DEFAULT_DOCUMENT_TEMPLATE = "Document: {document}\n\n"
DEFAULT_QUERY_TEMPLATE = "Question: {query}\n\nDoes the document contain information that helps answer the question? Answer Yes or No."


@dataclass(frozen=True)
class RelevancePrompt(Settings):
    """A yes/no-style relevance prompt (LaHoRe / Rabtriever teacher), configurable.

    Args:
        document_template: text around the document; must contain ``{document}``.
        query_template: text around the query, ending with the question to the LM; must contain ``{query}``.
        relevance_tokens: answer strings, the *relevant* answer first (``("Yes", "No")``, ``("A", "B")``);
            each contributes the first token it encodes to. The score is ``log p(first) − log p(others)``.
        chat: wrap the prompt in the tokenizer's chat template (a user turn, then the assistant header).
        max_document_tokens / max_query_tokens: truncation of the document / query text alone (the
            template text is never truncated).
    """

    document_template: str = DEFAULT_DOCUMENT_TEMPLATE
    query_template: str = DEFAULT_QUERY_TEMPLATE
    relevance_tokens: tuple[str, ...] = ("Yes", "No")
    chat: bool = True
    max_document_tokens: int = 128
    max_query_tokens: int = 64

    config_key: ClassVar[str] = "model.prompt"

    def check(self) -> None:
        if self.document_template.count("{document}") != 1:
            raise SettingsError(
                f"model.prompt.document_template must contain '{{document}}' once: {self.document_template!r}"
            )
        if self.query_template.count("{query}") != 1:
            raise SettingsError(
                f"model.prompt.query_template must contain '{{query}}' once: {self.query_template!r}"
            )
        if len(self.relevance_tokens) < 2:
            raise SettingsError(
                f"model.prompt.relevance_tokens needs at least two answers, got {list(self.relevance_tokens)}"
            )
        object.__setattr__(self, "relevance_tokens", tuple(self.relevance_tokens))


class PromptTokenizer:
    """Token ids of the three inputs for one tokenizer (pieces tokenised separately, then concatenated)."""

    def __init__(self, prompt: RelevancePrompt, tokenizer: PreTrainedTokenizerBase, name: str = "the LM"):
        self.prompt = prompt
        self.tokenizer = tokenizer
        prefix, suffix = self._chat_frame(name) if prompt.chat else ("", "")
        doc_before, doc_after = prompt.document_template.split("{document}")
        query_before, query_after = prompt.query_template.split("{query}")
        self._prefix = self._encode(prefix)
        if (
            not prompt.chat
            and getattr(tokenizer, "add_bos_token", False)
            and tokenizer.bos_token_id is not None
        ):
            self._prefix = [tokenizer.bos_token_id, *self._prefix]
        self._doc_before, self._doc_after = self._encode(doc_before), self._encode(doc_after)
        self._query_before, self._query_after = self._encode(query_before), self._encode(query_after + suffix)
        self.relevance_ids = relevance_token_ids(prompt.relevance_tokens, tokenizer, name)

    def _chat_frame(self, name: str) -> tuple[str, str]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"prompt.chat=true but the tokenizer of {name} has no chat template; set prompt.chat=false"
            )
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": CHAT_MARK}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(CHAT_MARK) != 1:
            raise ValueError(f"cannot locate the user message in the chat template of {name}")
        prefix, suffix = rendered.split(CHAT_MARK)
        return prefix, suffix

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _encode_many(self, texts: Sequence[str], limit: int) -> list[list[int]]:
        if not texts:
            return []
        return plain_token_ids(self.tokenizer, texts, limit)

    def document_ids(self, documents: Sequence[str], with_prefix: bool = True) -> list[list[int]]:
        """``prefix + document part`` per document (the teacher's and the student's shared beginning)."""
        head = self._prefix if with_prefix else []
        return [
            head + self._doc_before + row + self._doc_after
            for row in self._encode_many(documents, self.prompt.max_document_tokens)
        ]

    def query_ids(self, queries: Sequence[str], with_prefix: bool = True) -> list[list[int]]:
        """``prefix + query part + suffix`` per query; its last token is the answer position."""
        head = self._prefix if with_prefix else []
        return [
            head + self._query_before + row + self._query_after
            for row in self._encode_many(queries, self.prompt.max_query_tokens)
        ]

    def pair_ids(self, queries: Sequence[str], documents: Sequence[str]) -> list[list[int]]:
        """``prefix + document part + query part + suffix`` per (query, document) pair."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents: pairs must align")
        return [
            d + q for d, q in zip(self.document_ids(documents), self.query_ids(queries, with_prefix=False))
        ]


def relevance_token_ids(
    answers: Sequence[str], tokenizer: PreTrainedTokenizerBase, name: str = "the LM"
) -> torch.Tensor:
    """The first token id of each answer string; errors when one is unknown or two answers collide."""
    ids = []
    for answer in answers:
        encoded = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise ValueError(
                f"prompt.relevance_tokens: '{answer}' encodes to no token with the tokenizer of {name}"
            )
        if tokenizer.unk_token_id is not None and encoded[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"prompt.relevance_tokens: '{answer}' is unknown to the tokenizer of {name} (maps to UNK)"
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"prompt.relevance_tokens {list(answers)} share a first token ({ids}) with the tokenizer of {name}"
        )
    return torch.tensor(ids, dtype=torch.long)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids [B, T]``, ``attention_mask [B, T]`` and ``lengths [B]``, padded on the right.

    Right padding keeps every sequence at positions ``0 … len−1``, so a document's states are the same
    whether it is read alone or as the teacher's prefix.
    """
    if not rows:
        raise ValueError("nothing to pad: empty batch")
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    input_ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    return input_ids, attention_mask, lengths
