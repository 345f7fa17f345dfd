"""``DreamModule``: train the embedder through selected attention heads of a frozen LM (DREAM).

Per query: cosines ``c_j = cos(E(q), E(d_j))`` over its candidates → bias ``b_j = log(k·softmax_j(c_j/τ_attn))``
on document ``j``'s key block in the selected heads → one frozen-LM pass over ``[d_1 … d_k ; prompt(q) ; y]``
→ mean NLL of the target tokens ``y`` (:mod:`lightning_modules.losses.dream`). Only the embedder receives
gradients (through the bias). See docs/dream.md; every [ours] choice is a field of :class:`DreamSettings`.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from datamodules.batch import RetrievalBatch, TokenizedTexts
from datamodules.protocols import TrainingExamples
from lightning_modules.base import RetrieverModule
from lightning_modules.distributed import call_through_strategy
from lightning_modules.dream.attention import attention_name
from lightning_modules.dream.batch import DreamBatchPreparer
from lightning_modules.dream.calibration import rank_heads_on_examples, write_ranking
from lightning_modules.dream.heads import middle_third_heads, parse_head_map, top_heads
from lightning_modules.dream.mining import MinedCandidates
from lightning_modules.dream.settings import DreamSettings
from lightning_modules.losses.dream import (
    HeadMap,
    candidate_cosines,
    document_bias,
    dream_lm_loss,
    key_position_bias,
)
from lightning_modules.models.chunked import embed_in_chunks
from lightning_modules.settings import SettingsError, settings_arguments


class DreamModule(settings_arguments(DreamSettings), RetrieverModule):
    """DREAM (Tang & Yang, 2026) as read in docs/dream.md.

    Args:
        frozen_lm: :class:`FrozenCausalLM` arguments (its attention implementation is set to DREAM's).
        **kwargs: the :class:`DreamSettings` fields (``tau_attn``, ``heads``, ``candidates``, ...) and the
            :class:`RetrieverModule` arguments (``embedder``, ``optimizer``, ...).
    """

    def __init__(self, frozen_lm: dict[str, Any] | None = None, **kwargs: Any):
        if frozen_lm is None:
            raise SettingsError(
                "DREAM needs model.frozen_lm (the frozen causal LM whose attention is biased)"
            )
        settings, base = DreamSettings.take(kwargs, RetrieverModule.__init__)
        frozen_lm = {**frozen_lm, "attn_implementation": attention_name(settings.attention_backend)}
        super().__init__(frozen_lm=frozen_lm, **base)
        self.save_hyperparameters()
        if self.embedder is None:
            raise SettingsError("DREAM needs model.embedder (the retriever it trains)")
        self.settings: DreamSettings = settings
        config = self.frozen_lm.config
        self.num_layers, self.num_heads = config.num_hidden_layers, config.num_attention_heads
        self.selected_heads: HeadMap | None = self.configured_heads()
        self.head_ranking: list[dict] | None = None
        self.mined = MinedCandidates(settings.mined_k, settings.mine_every_n_steps, settings.mine_with)

    def configured_heads(self) -> HeadMap | None:
        """The heads ``model.heads`` names (None for ``intervention``: chosen when training starts)."""
        heads = self.settings.heads
        if heads.selection == "middle_third":
            return middle_third_heads(self.num_layers, self.num_heads)
        if heads.selection == "explicit":
            return parse_head_map(heads.layers, self.num_layers, self.num_heads)
        return None

    # ---- head selection ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if (
            self.selected_heads is None
        ):  # under FSDP inside the wrapped forward, where the sharded LM is usable
            self.selected_heads = call_through_strategy(self.trainer, self, "select_heads_by_intervention")
        rank_zero_info(f"DREAM heads ({self.settings.heads.selection}): {self.describe_heads()}")

    def describe_heads(self) -> str:
        heads = self.selected_heads or {}
        return f"{sum(len(h) for h in heads.values())} heads in layers {sorted(heads)}"

    def training_data(self) -> TrainingExamples:
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, TrainingExamples):
            raise TypeError(
                f"DREAM's intervention heads and mined candidates need labelled training examples and a corpus "
                f"(datamodules.retrieval.RetrievalDataModule), not {type(datamodule).__name__}"
            )
        return datamodule

    def select_heads_by_intervention(self) -> HeadMap:
        """Rank heads on ≤ 32 training questions (uses gold labels), keep the top N, save the ranking."""
        data = self.training_data()
        ranking, questions = rank_heads_on_examples(
            self.frozen_lm.model,
            self.batch_preparer(),
            data.train_examples,
            int(data.group_size),
            self.device,
        )
        heads = top_heads(ranking, int(self.settings.heads.top_n))
        self.head_ranking = [item.as_dict() for item in ranking]
        if self.trainer.is_global_zero:
            path = write_ranking(
                self.trainer.default_root_dir, heads, self.head_ranking, questions, self.settings.tau_attn
            )
            rank_zero_info(f"DREAM head ranking saved to {path}")
        return heads

    # ---- batches ------------------------------------------------------------------------------------------
    def batch_preparer(self) -> DreamBatchPreparer:
        return DreamBatchPreparer(self.embedder.text_tokenizer, self.frozen_lm.tokenizer, self.settings)

    def with_mined_candidates(self, batch: RetrievalBatch) -> RetrievalBatch:
        """``candidates=mined``: the batch's queries with their mined corpus documents (re-mined when due)."""
        self.mined.refresh(self.training_data(), self.global_step, self.encode_queries, self.encode_documents)
        shuffle_at = self.global_step if self.settings.shuffle_mined else None
        rows = self.mined.candidates(batch.query_ids, shuffle_at_step=shuffle_at)
        return self.batch_preparer().with_candidates(batch, rows).to(self.device)

    # ---- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor | None:
        batch = self.prepared(batch)
        if self.settings.candidates == "mined":
            batch = self.with_mined_candidates(batch)
        inputs, settings = batch.embedder_inputs, self.settings
        cosines = candidate_cosines(
            self.embed_chunked(inputs.queries), self.embed_chunked(inputs.documents), inputs.candidates
        )
        bias = document_bias(cosines, settings.tau_attn)
        key_bias = key_position_bias(bias, batch.lm_inputs.document_index)
        loss, unbiased = dream_lm_loss(
            self.frozen_lm.model,
            batch.lm_inputs,
            key_bias,
            self.selected_heads,
            settings.reuse_document_cache,
            settings.block_diagonal,
            with_unbiased_nll=settings.log_unbiased_nll,
        )
        self.log_step(batch, loss, cosines, bias, unbiased)
        return self.checked_loss(loss, batch_idx)

    def embed_chunked(self, tokens: TokenizedTexts) -> torch.Tensor:
        """The embeddings of ``tokens`` with gradients, ``model.encode_chunk_size`` texts per forward."""
        return embed_in_chunks(
            self.embedder, tokens.input_ids, tokens.attention_mask, self.settings.encode_chunk_size
        )

    def log_step(
        self,
        batch: RetrievalBatch,
        loss: torch.Tensor,
        cosines: torch.Tensor,
        bias: torch.Tensor,
        unbiased: torch.Tensor | None,
    ) -> None:
        size = len(batch)
        if unbiased is not None:
            self.log("train/nll_gain", unbiased - loss.detach(), batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/bias_std", bias.detach().std(dim=1).mean(), batch_size=size)
        if self.settings.candidates == "dataset" and batch.gold is not None:  # gold is known per candidate
            weights = torch.softmax(cosines.detach() / self.settings.tau_attn, dim=1)
            self.log("train/gold_weight", (weights * batch.gold.to(weights)).sum(1).mean(), batch_size=size)

    # ---- checkpoints keep the chosen heads (the intervention ranking is not recomputed on resume) ------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.selected_heads is not None:
            checkpoint["dream_heads"] = {str(k): list(v) for k, v in self.selected_heads.items()}
        if self.head_ranking is not None:
            checkpoint["dream_head_ranking"] = self.head_ranking

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "dream_heads" in checkpoint:
            self.selected_heads = parse_head_map(checkpoint["dream_heads"], self.num_layers, self.num_heads)
        self.head_ranking = checkpoint.get("dream_head_ranking", self.head_ranking)
