"""Rabtriever's settings (``model.*`` of ``experiments/model/rabtriever.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_modules.rabtriever.prompt import RelevancePrompt
from lightning_modules.settings import Settings, SettingsError


@dataclass(frozen=True)
class RabtrieverSettings(Settings):
    """How Rabtriever trains and retrieves (docs/rabtriever.md).

    Attributes:
        prompt: :class:`RelevancePrompt` (``model.prompt``).
        predictor: ``{"kind": "mlp"|"cross_attention", "inner_size", "num_heads", "dropout"}``.
        num_document_states: K, document states kept per document (default 8).
        kl_weight: λ of the reverse KL term (default 1).
        kl_over: ``relevance`` (softmax over the relevance tokens, default) or ``vocabulary``.
        on_policy_top_m: also train on the m corpus documents the student currently ranks highest per query
            (their teacher targets are computed on the fly); 0 disables (default).
        lm_batch_size: pairs / texts per frozen-LM pass.
        lm_precision: ``fp32`` or ``bf16`` (autocast) for every frozen-LM pass.
        cache_document_states: keep the corpus ``Z_d`` on disk between runs.
        score_chunk: (query, document) pairs scored per predictor call at retrieval.
    """

    prompt: RelevancePrompt = field(default_factory=RelevancePrompt)
    predictor: dict[str, Any] | None = None
    num_document_states: int = 8
    kl_weight: float = 1.0
    kl_over: Literal["relevance", "vocabulary"] = "relevance"
    on_policy_top_m: int = 0
    lm_batch_size: int = 16
    lm_precision: Literal["fp32", "float32", "bf16", "bfloat16"] = "fp32"
    cache_document_states: bool = True
    score_chunk: int = 8192

    def check(self) -> None:
        if self.on_policy_top_m < 0:
            raise SettingsError(f"model.on_policy_top_m must be >= 0, got {self.on_policy_top_m}")
