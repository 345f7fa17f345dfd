"""DREAM's ``candidates=mined``: each training query's top ``mined_k`` corpus documents, label-free.

``mine_with=embedder`` ranks the corpus with the current embedder and re-mines every
``mine_every_n_steps`` (a full corpus encode); ``bm25`` ranks once with BM25.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from datamodules.mining import bm25_top_k
from datamodules.protocols import TrainingExamples
from retrieval.search import exact_top_k

Encoder = Callable[[list[str]], torch.Tensor]


class MinedCandidates:
    """The mined candidate texts of every training query, refreshed on schedule.

    Args:
        k: documents per query (``mined_k``).
        every_n_steps: re-mining period with the embedder (``mine_every_n_steps``).
        mine_with: ``embedder`` or ``bm25``.
    """

    def __init__(self, k: int, every_n_steps: int, mine_with: str):
        self.k, self.every_n_steps, self.mine_with = k, every_n_steps, mine_with
        self.rows: dict[str, list[str]] = {}
        self.mined_at_step: int | None = None

    def due(self, step: int) -> bool:
        if not self.rows:
            return True
        return self.mine_with != "bm25" and step - (self.mined_at_step or 0) >= self.every_n_steps

    @torch.no_grad()
    def refresh(
        self, data: TrainingExamples, step: int, encode_queries: Encoder, encode_documents: Encoder
    ) -> None:
        """Mine when due: the top ``k`` corpus documents of every training query of ``data``."""
        if not self.due(step):
            return
        documents = list(data.load_corpus().corpus.values())
        texts = [doc.as_text() for doc in documents]
        examples = data.train_examples
        k = min(self.k, len(texts))
        if self.mine_with == "bm25":
            top = bm25_top_k([ex.query for ex in examples], documents, k)
        else:
            queries = encode_queries([ex.query for ex in examples])
            top = exact_top_k(queries, encode_documents(texts), k)[1].tolist()
        self.rows = {ex.query_id: [texts[int(i)] for i in row] for ex, row in zip(examples, top)}
        self.mined_at_step = step

    def candidates(self, query_ids: list[str], shuffle_at_step: int | None = None) -> list[list[str]]:
        """Each query's mined documents: in rank order, or with ``shuffle_at_step`` in a fixed random order
        per (query, step)."""
        rows = [list(self.rows[query_id]) for query_id in query_ids]
        if shuffle_at_step is not None:
            for query_id, row in zip(query_ids, rows):
                random.Random(f"{query_id}-{shuffle_at_step}").shuffle(row)
        return rows
