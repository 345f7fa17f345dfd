"""Rabtriever: distil a generative reranker into an independently-encoding retriever (docs/rabtriever.md).

Teacher and student share one frozen LM (the base module's ``frozen_lm``); only the predictor trains.

- Teacher: ``h_T``, ``p_T`` at the answer position of ``M([doc; query; prompt])``.
- Student: ``Z_d`` = last K states of ``M(doc)``, ``h_q`` = answer-position state of ``M([query; prompt])``
  (all before the final norm); ``p_S`` = frozen LM head(frozen norm(``P(h_q, Z_d)``)).
- Loss: ``‖norm(P) − norm(h_T)‖² + λ·KL(p_S ‖ p_T)`` over the relevance tokens (or the vocabulary).
- Retrieval: ``Z_d`` for the whole corpus is computed once (and cached on disk); each query costs one LM
  pass plus N predictor calls; the evaluation callback calls :meth:`RabtrieverModule.retrieve`.

Everything the LM computes is a function of frozen weights and text, so it is cached in memory per text
(teacher states per pair, ``Z_d`` per document, ``h_q`` per query): after the first epoch a training step
costs only predictor work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from datamodules.batch import RetrievalBatch
from datamodules.protocols import CorpusSource
from datamodules.records import Document
from lightning_modules.base import RetrieverModule
from lightning_modules.distributed import is_sharded, lockstep, world_size
from lightning_modules.losses.rabtriever import rabtriever_loss, relevance_log_odds
from lightning_modules.rabtriever.passes import RelevanceLM, autocast_for
from lightning_modules.rabtriever.predictor import build_predictor
from lightning_modules.rabtriever.settings import RabtrieverSettings
from lightning_modules.rabtriever.state_store import cached_document_states
from lightning_modules.settings import SettingsError, settings_arguments
from retrieval.search import top_k_in_blocks

LOCKSTEP_FILLER = "."  # the text of the throw-away passes that keep the ranks in step under FSDP


class RabtrieverModule(settings_arguments(RabtrieverSettings), RetrieverModule):
    """The Rabtriever student and its training against the generative-reranker teacher.

    Args:
        frozen_lm: keyword arguments of :class:`FrozenCausalLM` (teacher and student share it).
        **kwargs: the :class:`RabtrieverSettings` fields (``prompt``, ``predictor``, ``kl_over``, ...) and
            the :class:`RetrieverModule` arguments (optimizer, scheduler, nan_policy, ...); no embedder.

    Batches are tokenised here, not in the DataLoader workers: every frozen-LM pass is memoised per text
    (most of a step's pairs are cached after the first epoch, and on-policy documents are picked at step
    time), so tokenising them at collate time would be wasted work.
    """

    def __init__(self, frozen_lm: dict[str, Any] | None = None, **kwargs: Any):
        if kwargs.get("embedder") is not None:
            raise SettingsError(
                "Rabtriever has no trainable embedder (the student reads the frozen LM): set model.embedder=null"
            )
        if frozen_lm is None:
            raise SettingsError("Rabtriever needs model.frozen_lm (teacher and student share it)")
        settings, base = RabtrieverSettings.take(kwargs, RetrieverModule.__init__)
        super().__init__(**{**base, "embedder": None, "frozen_lm": frozen_lm})
        self.save_hyperparameters()
        self.settings: RabtrieverSettings = settings
        self.lm = RelevanceLM(
            self.frozen_lm.model,
            self.frozen_lm.tokenizer,
            settings.prompt,
            settings.num_document_states,
            name=f"frozen LM '{self.frozen_lm.name_or_path}'",
        )
        predictor = dict(settings.predictor or {})
        self.predictor = build_predictor(predictor.pop("kind", "mlp"), self.lm.hidden_size, **predictor)
        self._teacher_states: dict[tuple[str, str], torch.Tensor] = {}
        self._document_states: dict[str, torch.Tensor] = {}
        self._query_states: dict[str, torch.Tensor] = {}
        self._corpus: tuple[str, torch.Tensor] | None = None
        self.document_state_seconds: float | None = None

    @property
    def lm_batch_size(self) -> int:
        return self.settings.lm_batch_size

    @property
    def lm_precision(self) -> str:
        return self.settings.lm_precision

    # ---- the student -------------------------------------------------------------------------------------
    def student_logits(
        self, query_states: torch.Tensor, document_states: torch.Tensor, vocabulary: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(P(h_q, Z_d)), logits)``; logits over the relevance tokens, or the vocabulary."""
        predicted = self.predictor(query_states.float(), document_states.float())
        normed = self.lm.final_norm(predicted)
        return normed, self.lm.vocabulary_logits(normed) if vocabulary else self.lm.relevance_logits(normed)

    def student_scores(self, query_states: torch.Tensor, document_states: torch.Tensor) -> torch.Tensor:
        """Relevance log-odds ``[...]`` of the student for (broadcastable) ``h_q [..., H]``, ``Z_d [..., K, H]``."""
        return relevance_log_odds(self.student_logits(query_states, document_states)[1])

    # ---- frozen-LM passes, cached per text ----------------------------------------------------------------
    def lm_is_sharded(self) -> bool:
        """FSDP shards the frozen LM: every pass is collective, so all ranks must run as many (``lockstep``)."""
        return world_size() > 1 and is_sharded(self.frozen_lm)

    @torch.no_grad()
    def query_states(self, queries: Sequence[str]) -> torch.Tensor:
        """``h_q`` ``[Q, H]`` on this module's device (cached per query text)."""
        missing = sorted({q for q in queries if q not in self._query_states})
        chunks = [missing[s : s + self.lm_batch_size] for s in range(0, len(missing), self.lm_batch_size)]
        with autocast_for(self.lm_precision, self.device):
            for chunk, real in lockstep(chunks, [LOCKSTEP_FILLER], self.lm_is_sharded()):
                states = self.lm.query_states(chunk).float().cpu()
                if real:
                    self._query_states.update(zip(chunk, states))
        return torch.stack([self._query_states[q] for q in queries]).to(self.device)

    @torch.no_grad()
    def teacher_states(
        self, queries: Sequence[str], documents: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_T [P, H], Z_d [P, K, H])`` for aligned pairs (teacher pass; both cached per text)."""
        pairs = list(zip(queries, documents))
        missing = sorted({p for p in pairs if p not in self._teacher_states}, key=lambda p: -len(p[1]))
        chunks = [missing[s : s + self.lm_batch_size] for s in range(0, len(missing), self.lm_batch_size)]
        filler = [(LOCKSTEP_FILLER, LOCKSTEP_FILLER)]
        with autocast_for(self.lm_precision, self.device):
            for chunk, real in lockstep(chunks, filler, self.lm_is_sharded()):
                out = self.lm.teacher([q for q, _ in chunk], [d for _, d in chunk])
                if not real:
                    continue
                for pair, answer, states in zip(
                    chunk, out.answer_states.float().cpu(), out.document_states.float().cpu()
                ):
                    self._teacher_states[pair] = answer
                    self._document_states.setdefault(pair[1], states)
        answers = torch.stack([self._teacher_states[p] for p in pairs]).to(self.device)
        states = torch.stack([self._document_states[d] for d in documents]).to(self.device)
        return answers, states

    def lm_identity(self) -> str:
        """The loaded LM's folder or hub name (an alias resolves differently under ``debug=tiny``)."""
        return str(getattr(self.frozen_lm.model.config, "_name_or_path", "") or self.frozen_lm.name_or_path)

    def corpus_states(self, texts: Sequence[str]) -> torch.Tensor:
        """``Z_d`` ``[N, K, H]`` (CPU) for a whole corpus: kept in memory and cached on disk."""
        digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
        if self._corpus is None or self._corpus[0] != digest:
            states, seconds = cached_document_states(
                self.lm_identity(),
                self.lm,
                texts,
                self.lm_batch_size,
                self.lm_precision,
                use_disk=self.settings.cache_document_states,
                lockstep=self.lm_is_sharded(),
            )
            self._corpus = (digest, states)
            self.document_state_seconds = seconds
        return self._corpus[1]

    # ---- retrieval ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def score_stored(
        self, query_states: torch.Tensor, stored: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ``(scores, indices)`` ``[Q, k]`` of each query over all stored ``Z_d`` ``[N, K, H]``."""

        def score_block(start: int, end: int) -> torch.Tensor:
            block = stored[start:end].to(self.device)
            return self.student_scores(query_states[:, None], block[None]).float().cpu()

        docs_per_call = max(self.settings.score_chunk // max(query_states.shape[0], 1), 1)
        return top_k_in_blocks(score_block, query_states.shape[0], stored.shape[0], top_k, docs_per_call)

    @torch.no_grad()
    def retrieve(
        self, query_texts: list[str], documents: list[Document], top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Student retrieval over stored document states (the evaluation callback's hook)."""
        was_training = self.training
        self.eval()
        stored = self.corpus_states([d.as_text() for d in documents])
        scores, indices = [], []
        for start in range(0, len(query_texts), self.lm_batch_size):
            chunk = self.query_states(query_texts[start : start + self.lm_batch_size])
            s, i = self.score_stored(chunk, stored, top_k)
            scores.append(s)
            indices.append(i)
        self.train(was_training)
        return torch.cat(scores), torch.cat(indices)

    # ---- training -----------------------------------------------------------------------------------------
    def on_policy_pool(self) -> list[str]:
        """The documents on-policy candidates come from: the training data module's corpus."""
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, CorpusSource):
            raise TypeError(
                f"on-policy documents need a datamodule with a corpus, not {type(datamodule).__name__}"
            )
        corpus = datamodule.load_corpus()
        return [d.as_text() for d in corpus.corpus.values()]

    def on_policy_documents(self, queries: Sequence[str], exclude: Sequence[set[str]]) -> list[list[str]]:
        """Per query, the ``on_policy_top_m`` corpus documents the student ranks highest (excluding given ones)."""
        texts = self.on_policy_pool()
        stored = self.corpus_states(texts)
        want = self.settings.on_policy_top_m + max(len(e) for e in exclude)
        _, indices = self.score_stored(self.query_states(queries), stored, want)
        picked = []
        for row, skip in zip(indices.tolist(), exclude):
            picked.append([texts[i] for i in row if texts[i] not in skip][: self.settings.on_policy_top_m])
        return picked

    def training_pairs(self, batch: RetrievalBatch) -> tuple[list[str], list[str]]:
        """Aligned (query, document) lists: each query with its group, plus on-policy documents when enabled."""
        groups = [list(group) for group in batch.documents]
        if self.settings.on_policy_top_m:
            extra = self.on_policy_documents(batch.queries, [set(g) for g in groups])
            groups = [g + e for g, e in zip(groups, extra)]
        return [q for q, g in zip(batch.queries, groups) for _ in g], [d for g in groups for d in g]

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor | None:
        pair_queries, pair_documents = self.training_pairs(self.prepared(batch))
        teacher_answer, document_states = self.teacher_states(pair_queries, pair_documents)
        query_states = self.query_states(pair_queries)
        vocabulary = self.settings.kl_over == "vocabulary"
        student_normed, student_logits = self.student_logits(query_states, document_states, vocabulary)
        with torch.no_grad():
            teacher_normed = self.lm.final_norm(teacher_answer)
            teacher_logits = (
                self.lm.vocabulary_logits(teacher_normed)
                if vocabulary
                else self.lm.relevance_logits(teacher_normed)
            )
        losses = rabtriever_loss(
            student_normed, teacher_normed, student_logits, teacher_logits, self.settings.kl_weight
        )
        size = len(pair_queries)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log("train/state_mse", losses["state_mse"], batch_size=size)
        self.log("train/reverse_kl", losses["reverse_kl"], batch_size=size)
        self.log("train/cached_pairs", float(len(self._teacher_states)), batch_size=size)
        return self.checked_loss(losses["loss"], batch_idx)
