"""LLM2Vec step 3: unsupervised SimCSE on top of the merged MNTP model (bidirectional, a new LoRA).

Each sentence passes twice through the model in training mode; the two dropout masks (attention dropout
raised to ``dropout``, LLM2Vec's ``simcse_dropout`` 0.3, plus LoRA dropout) make the two views. Mean pooling
over non-padding tokens; :func:`lightning_modules.losses.llm2vec.simcse_loss` with τ = 0.05.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules.llm2vec.lora_stage import LoRAStageModule
from lightning_modules.losses.llm2vec import simcse_loss
from lightning_modules.models.pooling import pool


class SimCSEModule(LoRAStageModule):
    """Unsupervised SimCSE (LLM2Vec ``run_simcse.py``); see :class:`LoRAStageModule`.

    Args:
        name_or_path: the MNTP stage's merged model.
        dropout: attention dropout during training (put back to the model's own value when saved).
        temperature: τ of :func:`simcse_loss`.
        **kwargs: :class:`LoRAStageModule` arguments.
    """

    def __init__(self, name_or_path: str, dropout: float = 0.3, temperature: float = 0.05, **kwargs: Any):
        super().__init__(
            name_or_path, causal_lm=False, model_overrides={"attention_dropout": dropout}, **kwargs
        )
        self.save_hyperparameters()
        self.temperature = temperature

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last-layer states ``[B, H]`` (fp32, not normalised), with the current dropout."""
        hidden = self.peft_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden.float(), attention_mask, "mean")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        first = self.embed(batch["input_ids"], batch["attention_mask"])
        second = self.embed(batch["input_ids"], batch["attention_mask"])
        loss = simcse_loss(first, second, self.temperature)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
