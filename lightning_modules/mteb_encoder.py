"""Any trained embedder or retriever module as an mteb 2.x model (``AbsEncoder``).

mteb calls ``encode(inputs, task_metadata=..., hf_split=..., hf_subset=..., prompt_type=...)`` with a
DataLoader of batches; ``prompt_type`` says whether the texts are queries or documents, which picks the
embedder's query or document instruction. ``mteb_model_meta`` names the model and its revision (e.g. the
training step): ``mteb.evaluate`` refuses a model without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from lightning_modules.base import RetrieverModule
from lightning_modules.models.embedder import Embedder
from lightning_modules.protocols import TextEncoder

PROJECT_ORG = "llm-supervised-retrievers"


def build_model_meta(
    name: str,
    revision: str,
    dim: int | None,
    max_tokens: int | None,
    n_parameters: int | None,
    normalized: bool,
) -> ModelMeta:
    """The minimal ``ModelMeta`` mteb needs; ``name`` gets the ``org/`` prefix mteb requires."""
    return ModelMeta.create_empty(
        {
            "name": name if "/" in name else f"{PROJECT_ORG}/{name}",
            "revision": revision,
            "embed_dim": dim,
            "max_tokens": max_tokens,
            "n_parameters": n_parameters,
            "framework": ["PyTorch"],
            "similarity_fn_name": ScoringFunction.COSINE if normalized else ScoringFunction.DOT_PRODUCT,
            "modalities": ["text"],
            "open_weights": True,
            "use_instructions": None,
        }
    )


def find_embedder(model: Any) -> Embedder | None:
    if isinstance(model, Embedder):
        return model
    return model.embedder if isinstance(model, RetrieverModule) else None


class MTEBEncoder(AbsEncoder):
    """Wraps an :class:`Embedder` or a module with ``encode_queries`` / ``encode_documents`` for mteb.

    Args:
        model: an ``Embedder``, or a ``RetrieverModule`` (its ``encode_queries``/``encode_documents`` are
            used, so methods that embed differently, e.g. LLM2Vec-Gen, are evaluated their own way).
        name: model name in mteb results (``org/`` is prepended when missing).
        revision: e.g. ``step-1200``; mteb keys its results by (name, revision).
        batch_size / precision: encoding settings when ``model`` is an ``Embedder`` (``fp32`` or ``bf16``).
        prefixes: ``{"query": ..., "document": ...}`` to replace the embedder's own instructions during
            evaluation (default: keep the instructions it was trained with).
        title_separator: documents are ``title + separator + text`` (``" "``: mteb's convention; ``": "``:
            this project's ``Document.as_text()``, i.e. the same texts as the training-time evaluation).
        symmetric_kind: which side's instruction texts get when mteb gives no prompt type (STS, clustering).
        encode_fn: for a module, how to call its encoders: ``encode_fn("encode_queries", texts)``; the
            evaluation callback passes one that shards the texts across ranks (DDP/FSDP).
    """

    def __init__(
        self,
        model: Any,
        name: str = "embedder",
        revision: str = "final",
        batch_size: int = 64,
        precision: str = "fp32",
        prefixes: dict[str, str] | None = None,
        title_separator: str = " ",
        symmetric_kind: str = "query",
        show_progress: bool = False,
        encode_fn: Callable[[str, list[str]], torch.Tensor] | None = None,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got '{precision}'")
        if symmetric_kind not in ("query", "document"):
            raise ValueError(f"symmetric_kind must be 'query' or 'document', got '{symmetric_kind}'")
        self.embedder = find_embedder(model)
        uses_module = not isinstance(model, Embedder) and isinstance(model, TextEncoder)
        if self.embedder is None and not uses_module:
            raise TypeError(
                f"cannot evaluate a {type(model).__name__} with mteb: pass an Embedder or a module with "
                "encode_queries(texts) and encode_documents(texts)"
            )
        if prefixes is not None and self.embedder is None:
            raise ValueError(
                "prefixes need an Embedder (the module embeds on its own and has no instruction to replace)"
            )
        unknown = set(prefixes or {}) - {"query", "document"}
        if unknown:
            raise ValueError(f"prefixes keys must be 'query' and/or 'document', got {sorted(unknown)}")
        self.model = model
        self.uses_module = uses_module
        self.batch_size, self.precision = batch_size, precision
        self.prefixes = prefixes
        self.title_separator = title_separator
        self.symmetric_kind = symmetric_kind
        self.show_progress = show_progress
        self.encode_fn = encode_fn or (lambda method, texts: getattr(model, method)(texts))
        dim = self.embedder.dim if self.embedder is not None else None
        normalized = self.embedder.normalize if self.embedder is not None else True
        max_tokens = self.embedder.max_length if self.embedder is not None else None
        params = sum(p.numel() for p in self.embedder.parameters()) if self.embedder is not None else None
        self.mteb_model_meta = build_model_meta(name, revision, dim, max_tokens, params, normalized)

    def with_revision(self, revision: str) -> MTEBEncoder:
        """The same wrapper under another revision (the callback uses ``step-<N>``)."""
        self.mteb_model_meta = self.mteb_model_meta.model_copy(update={"revision": revision})
        return self

    def batch_texts(self, batch: dict[str, Any], kind: str) -> list[str]:
        """The texts of one mteb batch; documents are rebuilt from title and body with ``title_separator``."""
        texts = list(batch["text"])
        if kind != "document" or "body" not in batch:
            return texts
        titles = batch.get("title") or [""] * len(texts)
        return [
            f"{title}{self.title_separator}{body}" if title else body
            for title, body in zip(titles, batch["body"])
        ]

    def kind_for(self, prompt_type: PromptType | None) -> str:
        if prompt_type is None:
            return self.symmetric_kind
        return "query" if PromptType(prompt_type) == PromptType.query else "document"

    @contextmanager
    def instructions(self) -> Iterator[None]:
        """Temporarily replace the embedder's instructions with ``prefixes``."""
        if self.prefixes is None or self.embedder is None:
            yield
            return
        saved = dict(self.embedder.instructions)
        self.embedder.instructions.update(self.prefixes)
        try:
            yield
        finally:
            self.embedder.instructions.clear()
            self.embedder.instructions.update(saved)

    def encode(
        self,
        inputs,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        kind = self.kind_for(prompt_type)
        texts = [text for batch in inputs for text in self.batch_texts(batch, kind)]
        return self.encode_texts(texts, kind)

    def encode_texts(self, texts: list[str], kind: str) -> torch.Tensor:
        """float32 ``[N, H]`` embeddings of ``texts`` as ``kind`` (``query``/``document``)."""
        if self.uses_module and self.prefixes is None:
            return (
                self.encode_fn("encode_queries" if kind == "query" else "encode_documents", texts)
                .float()
                .cpu()
            )
        with self.instructions():
            return self.embedder.encode(
                texts,
                kind,
                batch_size=self.batch_size,
                precision=self.precision,
                show_progress=self.show_progress,
            ).float()
