"""What the two LLM2Vec training steps share: the backbone loaded with bidirectional attention, a fresh LoRA
adapter on every projection, AdamW with a linear schedule, and a merged copy saved as a plain HF folder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from lightning_modules.models.attention import attn_implementation_for
from lightning_modules.models.frozen_lm import load_tokenizer, parse_dtype
from lightning_modules.models.registry import resolve_model_path

# LLM2Vec's LoRA (train_configs/mntp, train_configs/simcse): r 16, alpha 2r, dropout 0.05, every projection
LLM2VEC_LORA = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "bias": "none",
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


class LoRAStageModule(L.LightningModule):
    """A backbone with bidirectional attention and a new LoRA adapter; subclasses define the loss.

    Args:
        name_or_path: the backbone (alias, folder, hub name, or an earlier stage's output folder).
        causal_lm: load ``AutoModelForCausalLM`` (MNTP needs the LM head) instead of ``AutoModel``.
        lora: ``LoraConfig`` arguments over :data:`LLM2VEC_LORA`.
        lr / weight_decay / warmup_steps: AdamW and a linear warm-up then linear decay to 0 at the last step.
        dtype: backbone weights dtype.
        gradient_checkpointing: recompute activations in backward.
        model_overrides: config fields set at load time (SimCSE's ``attention_dropout``).
        tiny: load the tiny random model of the backbone's family instead (``debug=tiny``).
    """

    def __init__(
        self,
        name_or_path: str,
        causal_lm: bool,
        lora: dict[str, Any] | None = None,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        model_overrides: dict[str, Any] | None = None,
        tiny: bool = False,
    ):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        path = resolve_model_path(name_or_path, tiny=tiny)
        self.tokenizer = load_tokenizer(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        loader = AutoModelForCausalLM if causal_lm else AutoModel
        backbone = loader.from_pretrained(
            path,
            dtype=parse_dtype(dtype),
            attn_implementation=attn_implementation_for("bidirectional"),
            **(model_overrides or {}),
        )
        original = AutoConfig.from_pretrained(path)
        self.restore_config = {k: getattr(original, k, None) for k in (model_overrides or {})}
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora_config = {**LLM2VEC_LORA, **dict(lora or {})}
        self.peft_model = get_peft_model(backbone, LoraConfig(**self.lora_config))
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps

    @property
    def backbone(self) -> torch.nn.Module:
        """The adapted backbone (``…ForCausalLM`` or the bare model), LoRA layers inside."""
        return self.peft_model.get_base_model()

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.max_steps), 1)
        warmup = self.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def save_merged(self, path: str | Path) -> Path:
        """Merge LoRA into a copy of the backbone and save it with the tokenizer (load-time config
        overrides such as the training dropout are put back first)."""
        path = Path(path)
        merged = copy.deepcopy(self.peft_model).merge_and_unload()
        for key, value in self.restore_config.items():
            setattr(merged.config, key, value)
        merged.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path
