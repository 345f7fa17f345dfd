"""The contrastive baseline: InfoNCE with in-batch and hard negatives, gathered across ranks."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.batch import RetrievalBatch
from lightning_modules.base import RetrieverModule
from lightning_modules.distributed import gather_no_grad, gather_padded, gather_with_grad, world_size
from lightning_modules.losses.contrastive import contrastive_loss


class ContrastiveModule(RetrieverModule):
    """Trains the embedder with InfoNCE (the label-using baseline of the lab protocol).

    Batches come from :class:`datamodules.retrieval.RetrievalDataModule`: ``queries`` (B), ``documents``
    (B groups of G, each query's positive(s) first, then hard negatives), ``document_codes`` ([B, G]
    corpus indices) and ``positive_codes`` ([B, P], −1 padded); the loss is
    :func:`lightning_modules.losses.contrastive.contrastive_loss`. ``objective="info_nce"``: one target
    per query, its other positives masked out of the negatives. ``objective="mil_nce"``: every in-batch
    positive counts (multi-positive InfoNCE).

    Across ranks the embeddings are all-gathered with the local gradient kept, every rank computes the
    global loss, and the loss is multiplied by the world size so DDP's gradient averaging leaves the
    loss scale independent of the number of ranks (tevatron's pattern).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        mask_other_positives: bool = True,
        objective: str = "info_nce",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if objective not in ("info_nce", "mil_nce"):
            raise ValueError(f"model.objective must be 'info_nce' or 'mil_nce', got '{objective}'")
        self.save_hyperparameters()
        self.temperature = temperature
        self.mask_other_positives = mask_other_positives
        self.objective = objective

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor | None:
        batch = self.prepared(batch)
        inputs = batch.embedder_inputs
        queries = gather_with_grad(self.embedder.embed_tokens(inputs.queries))
        documents = gather_with_grad(self.embedder.embed_tokens(inputs.documents))
        loss = contrastive_loss(
            queries,
            documents,
            gather_no_grad(batch.document_codes.flatten()),
            gather_padded(batch.positive_codes, pad_value=-1),  # widths differ across ranks
            batch.group_size,
            self.objective,
            self.mask_other_positives,
            self.temperature,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return self.checked_loss(loss * world_size(), batch_idx)
