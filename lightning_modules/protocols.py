"""What the evaluation callbacks may ask of a training module, as typing protocols (mteb's split between
an encoder and a search model): a :class:`TextEncoder` embeds queries and documents, and the callback
searches; a :class:`CorpusRetriever` searches a corpus itself (Rabtriever's predictor over stored states)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from datamodules.records import Document


@runtime_checkable
class TextEncoder(Protocol):
    """Embeds texts as queries or documents: float32 ``[N, H]`` on the CPU, in input order."""

    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor: ...

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor: ...


@runtime_checkable
class CorpusRetriever(Protocol):
    """Retrieves from a corpus itself: ``(scores, indices)`` ``[Q, top_k]`` into ``documents``."""

    def retrieve(
        self, query_texts: list[str], documents: list[Document], top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class CachesUntrainedScore(Protocol):
    """A module whose score before training depends only on what :meth:`untrained_score_key` returns
    (None: do not cache)."""

    def untrained_score_key(self) -> dict[str, Any] | None: ...
