"""DREAM's collate-time work: each query's candidates, the embedder's tokens and the frozen LM's input.

With ``candidates=dataset`` the candidates are the query's group (shuffled per query and epoch so the gold
paragraph is not always first; ``gold`` and the ids are shuffled with it), with ``in_batch`` every
document of the batch. Both are known when the batch is collated, so :class:`DreamBatchPreparer` builds
everything there, in the DataLoader workers. With ``mined`` the candidates are the corpus documents the
*current* embedder ranks highest, re-mined during training: they are only known at step time, so the
module calls :meth:`DreamBatchPreparer.with_candidates` itself (docs/architecture.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.batch import EmbedderInputs, RetrievalBatch
from lightning_modules.dream.inputs import DreamInputs, build_dream_inputs
from lightning_modules.dream.settings import DreamSettings
from lightning_modules.models.tokenization import EmbedderTokenizer


def shuffled_groups(batch: RetrievalBatch) -> RetrievalBatch:
    """Each query's group in a fixed random order per (query, epoch), with ids, codes and gold alike."""
    orders = []
    for query_id in batch.query_ids:
        order = list(range(batch.group_size))
        random.Random(f"{query_id}-{batch.epoch}").shuffle(order)
        orders.append(order)
    index = torch.tensor(orders, dtype=torch.long).view(len(batch), batch.group_size)
    return replace(
        batch,
        documents=[[row[j] for j in order] for row, order in zip(batch.documents, orders)],
        document_ids=[[row[j] for j in order] for row, order in zip(batch.document_ids, orders)],
        document_codes=batch.document_codes.gather(1, index),
        gold=batch.gold.gather(1, index) if batch.gold is not None else None,
    )


@dataclass
class DreamBatchPreparer:
    """Picks each query's candidates and tokenises them for the embedder and the frozen LM.

    Args:
        embedder_tokenizer: the trainable embedder's tokenizer.
        lm_tokenizer: the frozen LM's tokenizer.
        settings: the module's :class:`DreamSettings`.
    """

    embedder_tokenizer: EmbedderTokenizer
    lm_tokenizer: PreTrainedTokenizerBase
    settings: DreamSettings

    def __call__(self, batch: RetrievalBatch) -> RetrievalBatch:
        if self.settings.candidates == "mined":  # chosen at step time under the current embedder
            return replace(batch, prepared=True)
        if self.settings.candidates == "in_batch":
            return self.with_candidates(batch, [batch.flat_documents for _ in batch.queries])
        batch = shuffled_groups(batch) if self.settings.shuffle_candidates else batch
        return self.with_candidates(batch, batch.documents)

    def with_candidates(self, batch: RetrievalBatch, candidates: list[list[str]]) -> RetrievalBatch:
        """``batch`` with embedder inputs (each distinct candidate text embedded once) and LM inputs for
        ``candidates`` (``[B][k]`` texts)."""
        unique = list(dict.fromkeys(text for row in candidates for text in row))
        position = {text: i for i, text in enumerate(unique)}
        embedder_inputs = EmbedderInputs(
            self.embedder_tokenizer(batch.queries, "query"),
            self.embedder_tokenizer(unique, "document"),
            torch.tensor([[position[t] for t in row] for row in candidates], dtype=torch.long),
        )
        lm_inputs = self.lm_inputs(candidates, batch.queries, batch.answers)
        return replace(batch, embedder_inputs=embedder_inputs, lm_inputs=lm_inputs, prepared=True)

    def lm_inputs(
        self, candidates: list[list[str]], queries: list[str], answers: list[tuple[str, ...]]
    ) -> DreamInputs:
        """``[d_1 … d_k ; prompt(q) ; y]`` per query (see :func:`build_dream_inputs`)."""
        settings = self.settings
        prompts, targets = zip(*(settings.prompt_and_target(q, a) for q, a in zip(queries, answers)))
        return build_dream_inputs(
            self.lm_tokenizer,
            candidates,
            list(prompts),
            list(targets),
            settings.max_document_tokens,
            settings.max_target_tokens,
            settings.document_separator,
            settings.append_eos_to_target,
            self.lm_tokenizer.bos_token_id if settings.prepend_bos else None,
        )
