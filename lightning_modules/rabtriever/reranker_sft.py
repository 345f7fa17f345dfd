"""The Rabtriever teacher's first stage: LoRA fine-tuning of the causal LM as a generative reranker on
relevance labels (label use). The merged LM then serves as the frozen teacher and student LM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.batch import RetrievalBatch
from lightning_modules.losses.rabtriever import listwise_relevance_loss, relevance_classification_loss
from lightning_modules.models.embedder import DEFAULT_LORA
from lightning_modules.models.frozen_lm import load_frozen_lm
from lightning_modules.rabtriever.passes import RelevanceLM
from lightning_modules.rabtriever.prompt import RelevancePrompt

SFT_LOSSES = ("pointwise", "listwise")


class RerankerSFTModule(L.LightningModule):
    """LoRA on the causal LM, trained on the relevance answer token of (query, document) pairs.

    Batches are :class:`datamodules.retrieval.RetrievalDataModule` batches: ``queries`` (B), their groups
    of ``documents`` (B × G) and ``gold`` ``[B, G]`` (True for the query's positive).

    Args:
        name_or_path: the LM to fine-tune (registry alias, folder or hub name).
        prompt: :class:`RelevancePrompt` arguments (use the same prompt in the Rabtriever run).
        lora: peft ``LoraConfig`` arguments (``{}``: r=8, alpha 16, all linear layers).
        lr: AdamW learning rate.
        dtype: weights dtype of the LM.
        gradient_checkpointing: recompute the LM's activations in backward (large LMs).
        loss: ``pointwise`` (:func:`relevance_classification_loss`: each pair's answer token, relevant or
            not, as LaHoRe's A/B SFT) or ``listwise`` (:func:`listwise_relevance_loss`: softmax of the
            relevance log-odds across each query's group).
    """

    def __init__(
        self,
        name_or_path: str,
        prompt: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        lr: float = 2e-4,
        dtype: str = "float32",
        loss: str = "pointwise",
        gradient_checkpointing: bool = False,
        tiny: bool = False,
    ):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        if loss not in SFT_LOSSES:
            raise ValueError(f"sft loss must be one of {', '.join(SFT_LOSSES)}; got '{loss}'")
        self.save_hyperparameters()
        self.loss_kind = loss
        model, tokenizer = load_frozen_lm(name_or_path, dtype=dtype, tiny=tiny)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.peft_model = get_peft_model(
            model, LoraConfig(**{**DEFAULT_LORA, **(lora or {}), "task_type": "CAUSAL_LM"})
        )
        self.tokenizer = tokenizer
        self.lm = RelevanceLM(
            self.peft_model.get_base_model(), tokenizer, RelevancePrompt(**(prompt or {})), name=name_or_path
        )
        self.lr = lr

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor:
        if batch.gold is None:
            raise ValueError("the reranker's fine-tuning needs relevance labels (a batch without gold)")
        pair_queries = [q for q, group in zip(batch.queries, batch.documents) for _ in group]
        documents = batch.flat_documents
        logits = self.lm.teacher(pair_queries, documents).relevance_logits
        labels = batch.gold.to(logits.device)
        if self.loss_kind == "listwise":
            loss = listwise_relevance_loss(logits.view(*labels.shape, -1), labels)
        else:
            loss = relevance_classification_loss(logits, labels.reshape(-1))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(documents))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)

    def save_merged(self, path: str | Path) -> Path:
        """Merge the LoRA weights into a copy of the LM and save it (with the tokenizer) as an HF folder."""
        import copy

        path = Path(path)
        merged = copy.deepcopy(self.peft_model).merge_and_unload()
        merged.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path
