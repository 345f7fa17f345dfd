"""The contrastive baseline: InfoNCE with in-batch and hard negatives, gathered across ranks."""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules.base import RetrieverModule
from lightning_modules.distributed import gather_no_grad, gather_padded, gather_with_grad, world_size
from lightning_modules.losses.contrastive import (
    info_nce_loss,
    multi_positive_info_nce_loss,
    other_positive_mask,
)


class ContrastiveModule(RetrieverModule):
    """Trains the embedder with InfoNCE (the label-using baseline of the lab protocol).

    Batches come from :class:`datamodules.RetrievalDataModule`: ``queries`` (B), ``documents`` (B·G, each
    query's positive(s) first, then hard negatives), ``document_ids`` (B·G ints) and ``positive_ids``
    (B×P ints, −1 padded). ``objective="info_nce"``: one target per query, its other positives masked out
    of the negatives. ``objective="mil_nce"``: every in-batch positive counts (multi-positive InfoNCE).

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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        queries = gather_with_grad(self.embedder.embed(batch["queries"], "query"))
        documents = gather_with_grad(self.embedder.embed(batch["documents"], "document"))
        document_ids = gather_no_grad(batch["document_ids"])
        positive_ids = gather_padded(batch["positive_ids"], pad_value=-1)  # widths differ across ranks
        positives = other_positive_mask(positive_ids, document_ids)
        if self.objective == "mil_nce":
            loss = multi_positive_info_nce_loss(queries, documents, positives, self.temperature)
        else:
            group = documents.shape[0] // queries.shape[0]
            targets = torch.arange(queries.shape[0], device=queries.device) * group
            exclude = positives if self.mask_other_positives else None
            loss = info_nce_loss(queries, documents, targets, exclude, self.temperature)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["queries"]))
        return self.checked_loss(loss * world_size(), batch_idx)
