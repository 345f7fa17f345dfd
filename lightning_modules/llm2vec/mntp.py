"""LLM2Vec step 2: masked next-token prediction (MNTP) on unlabeled text, bidirectional attention, LoRA.

Batches come from ``transformers.DataCollatorForLanguageModeling`` (``datamodules/unlabeled_text.py``):
``input_ids`` with ~20 % of the tokens masked, ``labels`` = the original id at masked positions (−100
elsewhere). A masked token ``x_i`` is predicted from the output at position ``i − 1``; the LM head runs only
at those positions (:func:`lightning_modules.losses.llm2vec.mntp_positions`).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules.llm2vec.lora_stage import LoRAStageModule
from lightning_modules.losses.llm2vec import masked_next_token_loss, mntp_positions


class MNTPModule(LoRAStageModule):
    """MNTP on a causal LM made bidirectional (LLM2Vec ``run_mntp.py``); see :class:`LoRAStageModule`."""

    def __init__(self, name_or_path: str, **kwargs: Any):
        super().__init__(name_or_path, causal_lm=True, **kwargs)
        self.save_hyperparameters()

    def mntp_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        lm = self.backbone
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows, columns, targets = mntp_positions(labels)
        logits = lm.get_output_embeddings()(hidden[rows, columns])
        return masked_next_token_loss(logits, targets)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        loss = self.mntp_loss(batch["input_ids"], mask, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
