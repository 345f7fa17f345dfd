"""How the trainable embedder's texts become token ids: instruction prefix, truncation, optional EOS, padding.

:class:`EmbedderTokenizer` holds only the HF tokenizer and these settings, so it can be pickled into
DataLoader workers: collators tokenise a batch there, and the embedder reads the tensors
(docs/architecture.md, "one batch's path").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.batch import EmbedderInputs, RetrievalBatch, TokenizedTexts
from retrieval.text import bounded_token_ids

Kind = Literal["query", "document"]


def plain_token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int
) -> list[list[int]]:
    """The first ``max_tokens`` ids of each text (no special tokens), without tokenising more of a text
    than that can need (:func:`retrieval.text.bounded_token_ids`)."""
    return bounded_token_ids(
        lambda batch: tokenizer(batch, add_special_tokens=False)["input_ids"], list(texts), max_tokens
    )


@dataclass
class EmbedderTokenizer:
    """Token ids of texts as the embedder reads them.

    Args:
        tokenizer: the embedder's HF tokenizer (its ``padding_side`` decides where padding goes).
        instructions: ``{"query": prefix, "document": prefix}`` (the embedder's own dict: an evaluation
            that swaps instructions swaps them here too).
        max_length: tokens per text, the appended EOS included.
        append_eos: append the tokenizer's EOS token.
    """

    tokenizer: PreTrainedTokenizerBase
    instructions: dict[str, str]
    max_length: int
    append_eos: bool = False

    def token_ids(self, texts: Sequence[str], kind: Kind) -> list[list[int]]:
        """Unpadded ids: ``instruction + text`` truncated to ``max_length`` (EOS included when appended);
        each text is cut to a bound derived from ``max_length`` before tokenising (:mod:`retrieval.text`)."""
        prefix = self.instructions[kind]
        budget = self.max_length - (1 if self.append_eos else 0)
        ids = bounded_token_ids(
            lambda batch: self.tokenizer(batch, truncation=True, max_length=budget)["input_ids"],
            [prefix + t for t in texts],
            budget,
        )
        if self.append_eos:
            ids = [row + [self.tokenizer.eos_token_id] for row in ids]
        # an empty text (no instruction, a tokenizer that adds no special token) is read as the EOS token
        # alone: a batch of zero-length rows cannot run through the backbone
        filler = [self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0]
        return [row or filler for row in ids]

    def pad(self, ids: list[list[int]]) -> TokenizedTexts:
        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        return TokenizedTexts(padded["input_ids"], padded["attention_mask"])

    def __call__(self, texts: Sequence[str], kind: Kind) -> TokenizedTexts:
        return self.pad(self.token_ids(texts, kind))


def mark_prepared(batch: RetrievalBatch) -> RetrievalBatch:
    """The preparer of methods that tokenise nothing at collate time (their LM passes cache per text)."""
    return replace(batch, prepared=True)


@dataclass
class EmbedderBatchPreparer:
    """Tokenises a batch's queries and every group member for the embedder (``candidates = arange(B·G)``).

    Args:
        tokenizer: the embedder's :class:`EmbedderTokenizer`.
        task_instructions: ``{task: (query prefix, document prefix)}`` added before the embedder's own
            instruction for single-task batches (LLM-Embedder); None: no per-task prefix.
    """

    tokenizer: EmbedderTokenizer
    task_instructions: dict[str, tuple[str, str]] | None = None

    def __call__(self, batch: RetrievalBatch) -> RetrievalBatch:
        queries, documents = batch.queries, batch.flat_documents
        if self.task_instructions is not None:
            if batch.task not in self.task_instructions:
                known = ", ".join(self.task_instructions)
                raise ValueError(f"batch of unknown task '{batch.task}' (configured: {known})")
            query_prefix, document_prefix = self.task_instructions[batch.task]
            queries = [query_prefix + q for q in queries]
            documents = [document_prefix + d for d in documents]
        candidates = torch.arange(len(documents)).view(len(batch), batch.group_size)
        inputs = EmbedderInputs(
            self.tokenizer(queries, "query"), self.tokenizer(documents, "document"), candidates
        )
        return replace(batch, embedder_inputs=inputs, prepared=True)
