"""Optional first stage: LoRA fine-tuning of the teacher as a reranker on relevance labels.

A small LM answers a yes/no or A/B relevance prompt barely better than chance; Rabtriever's teacher may
first be fine-tuned on (query, document, relevant?) pairs. This stage uses relevance labels: report it as
label use. The LoRA weights are merged and the LM is saved as a plain HF folder, which then serves as
``model.frozen_lm.name_or_path`` (teacher and student LM) of a Rabtriever run::

    python -m lightning_modules.rabtriever.sft --out runs/rabtriever_sft_teacher --steps 200
    python -m experiments.train exp=rabtriever_tiny model.frozen_lm.name_or_path=runs/rabtriever_sft_teacher
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_modules.base import DEFAULT_OPTIMIZER
from lightning_modules.losses.rabtriever import relevance_classification_loss
from lightning_modules.models.embedder import DEFAULT_LORA
from lightning_modules.models.frozen_lm import load_frozen_lm
from lightning_modules.rabtriever.passes import RelevanceLM
from lightning_modules.rabtriever.prompt import RelevancePrompt


class RerankerSFT(L.LightningModule):
    """LoRA on the causal LM, trained with :func:`relevance_classification_loss` on the answer token.

    Batches are :class:`datamodules.RetrievalDataModule` batches: ``queries`` (B), ``documents`` (B·G) and
    ``labels`` ``[B, G]`` (True for the query's positive).

    Args:
        name_or_path: the LM to fine-tune (registry alias, folder or hub name).
        prompt: :class:`RelevancePrompt` arguments (use the same prompt in the Rabtriever run).
        lora: peft ``LoraConfig`` arguments (``{}``: r=8, alpha 16, all linear layers).
        lr: AdamW learning rate.
    """

    def __init__(
        self,
        name_or_path: str,
        prompt: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        lr: float = 2e-4,
        dtype: str = "float32",
    ):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.save_hyperparameters()
        model, tokenizer = load_frozen_lm(name_or_path, dtype=dtype)
        self.peft_model = get_peft_model(
            model, LoraConfig(**{**DEFAULT_LORA, **(lora or {}), "task_type": "CAUSAL_LM"})
        )
        self.tokenizer = tokenizer
        self.lm = RelevanceLM(
            self.peft_model.get_base_model(), tokenizer, RelevancePrompt(**(prompt or {})), name=name_or_path
        )
        self.lr = lr

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        queries, documents, labels = batch["queries"], batch["documents"], batch["labels"]
        group = labels.shape[1]
        pair_queries = [q for q in queries for _ in range(group)]
        logits = self.lm.teacher(pair_queries, documents).relevance_logits
        loss = relevance_classification_loss(logits, labels.reshape(-1).to(logits.device))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(documents))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=DEFAULT_OPTIMIZER["weight_decay"])

    def save_merged(self, path: str | Path) -> Path:
        """Merge the LoRA weights into a copy of the LM and save it (with the tokenizer) as an HF folder."""
        import copy

        path = Path(path)
        merged = copy.deepcopy(self.peft_model).merge_and_unload()
        merged.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


def main(argv: list[str] | None = None) -> Path:
    from datamodules.retrieval import RetrievalDataModule

    parser = argparse.ArgumentParser(description="LoRA-fine-tune Rabtriever's teacher on relevance labels")
    parser.add_argument("--out", type=Path, required=True, help="folder of the merged, fine-tuned LM")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="hotpotqa")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-document-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    L.seed_everything(args.seed)
    data = RetrievalDataModule(
        path=args.data, batch_size=args.batch_size, group_size=args.group_size, seed=args.seed
    )
    prompt = {**_model_config_prompt(), "max_document_tokens": args.max_document_tokens}
    module = RerankerSFT(args.model, prompt=prompt, lr=args.lr)
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=data)
    return module.save_merged(args.out)


def _model_config_prompt() -> dict[str, Any]:
    """The prompt of ``experiments/model/rabtriever.yaml``, so the fine-tuned teacher answers the same question."""
    from omegaconf import OmegaConf

    from experiments import CONFIG_DIR

    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "rabtriever.yaml").prompt)


if __name__ == "__main__":
    main()
