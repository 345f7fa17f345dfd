"""The one training batch every method reads: queries with their groups of documents, already tokenised.

A datamodule's collate function (running in the DataLoader workers) builds a :class:`RetrievalBatch` from
the sampled items, then hands it to the training module's :class:`BatchPreparer`, which tokenises it for
the embedder (:class:`EmbedderInputs`) and, where the method's inputs are known at collate time, for the
frozen LM (``lm_inputs``). Lightning moves the result to the device through :meth:`RetrievalBatch.to`.
The data layer never imports a module: it only calls the preparer the module hands out
(:class:`PreparesBatches`), so the layers stay ordered (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch


@runtime_checkable
class Movable(Protocol):
    """Anything Lightning can move to a device (tensors, and the method-specific LM inputs)."""

    def to(self, device: torch.device | str) -> Any: ...


def moved(obj: Any, device: torch.device | str) -> Any:
    """A copy of the dataclass ``obj`` with every tensor (or :class:`Movable`) field on ``device``: the
    ``to`` of every batch part, so Lightning's ``transfer_batch_to_device`` moves a batch whole."""
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, (torch.Tensor, Movable)):
            changes[f.name] = value.to(device)
    return replace(obj, **changes)


@dataclass
class TokenizedTexts:
    """Padded token ids of a list of texts: ``input_ids`` and ``attention_mask``, both ``[N, T]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenizedTexts:
        return moved(self, device)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class EmbedderInputs:
    """What the trainable embedder reads for one batch.

    Attributes:
        queries: ``[B, Tq]`` the batch's queries (with the query instruction).
        documents: ``[N, Td]`` the documents to embed (with the document instruction), one row per text.
        candidates: ``[B, K]`` long, the row of ``documents`` holding query ``b``'s ``k``-th candidate
            (``arange(B·G).view(B, G)`` when every group member is embedded once).
    """

    queries: TokenizedTexts
    documents: TokenizedTexts
    candidates: torch.Tensor

    def to(self, device: torch.device | str) -> EmbedderInputs:
        return moved(self, device)


@dataclass
class RetrievalBatch:
    """One training batch.

    Attributes:
        query_ids / queries: ``B`` query ids and texts.
        documents: ``[B][G]`` each query's group of document texts (``[]`` per query for query-only data).
        document_ids: ``[B][G]`` their ids.
        document_codes: ``[B, G]`` int64 identity of each document, equal across ranks for equal documents
            (the corpus index for BEIR data, a hash of the id for task data; −1 when unknown).
        gold: ``[B, G]`` bool, True for a labelled positive; None when the data gives no labels.
        answers: per query, its desired outputs (possibly empty).
        positive_codes: ``[B, P]`` int64 codes of every judged positive of each query, −1 padded (BEIR data).
        task: the task family of a single-task batch (LLM-Embedder), else None.
        epoch: the epoch the items were sampled in (seeds per-epoch choices such as candidate order).
        embedder_inputs: the tokenised inputs of the embedder (set by a :class:`BatchPreparer`).
        lm_inputs: the method's tokenised frozen-LM inputs when known at collate time (e.g. DREAM's).
        prepared: whether a :class:`BatchPreparer` has run on this batch.
    """

    query_ids: list[str]
    queries: list[str]
    documents: list[list[str]]
    document_ids: list[list[str]]
    document_codes: torch.Tensor
    gold: torch.Tensor | None = None
    answers: list[tuple[str, ...]] = field(default_factory=list)
    positive_codes: torch.Tensor | None = None
    task: str | None = None
    epoch: int = 0
    embedder_inputs: EmbedderInputs | None = None
    lm_inputs: Movable | None = None
    prepared: bool = False

    def __post_init__(self) -> None:
        if not (len(self.query_ids) == len(self.queries) == len(self.documents) == len(self.document_ids)):
            raise ValueError(
                f"a batch needs one id, text, group and id group per query; got {len(self.query_ids)}, "
                f"{len(self.queries)}, {len(self.documents)} and {len(self.document_ids)}"
            )
        sizes = {len(group) for group in self.documents}
        if len(sizes) > 1:
            raise ValueError(
                f"every query of a batch needs the same number of documents, got {sorted(sizes)}"
            )

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def group_size(self) -> int:
        """``G``: documents per query."""
        return len(self.documents[0]) if self.documents else 0

    @property
    def flat_documents(self) -> list[str]:
        """The ``B·G`` document texts, each query's group together."""
        return [text for group in self.documents for text in group]

    @property
    def first_answers(self) -> list[str]:
        """Each query's first desired output ('' when it has none)."""
        return [answers[0] if answers else "" for answers in self.answers]

    def to(self, device: torch.device | str) -> RetrievalBatch:
        """A copy with every tensor on ``device`` (Lightning's ``transfer_batch_to_device`` calls this)."""
        return moved(self, device)


class BatchPreparer(Protocol):
    """A module's collate-time work: tokenise a batch (and pick what it needs); picklable, so it runs in
    DataLoader workers. Returns the batch with ``prepared=True``."""

    def __call__(self, batch: RetrievalBatch) -> RetrievalBatch: ...


@runtime_checkable
class PreparesBatches(Protocol):
    """A training module that hands its :class:`BatchPreparer` to the datamodule's collate function."""

    def batch_preparer(self) -> BatchPreparer: ...


@dataclass
class Collator:
    """``collate_fn`` of a training DataLoader: ``prepare(collate(items))`` (``prepare`` may be None)."""

    collate: Callable[[list[Any]], RetrievalBatch]
    prepare: BatchPreparer | None = None

    def __call__(self, items: list[Any]) -> RetrievalBatch:
        batch = self.collate(items)
        return self.prepare(batch) if self.prepare is not None else batch


def module_preparer(trainer: Any) -> BatchPreparer | None:
    """The attached training module's preparer, or None (no trainer, or a module that prepares nothing)."""
    module = trainer.lightning_module if isinstance(trainer, L.Trainer) else None
    return module.batch_preparer() if isinstance(module, PreparesBatches) else None


def padded_codes(rows: list[list[int]], pad: int = -1) -> torch.Tensor:
    """``[len(rows), max width]`` int64 tensor of ``rows``, right-padded with ``pad``."""
    width = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
