"""The teacher's SFT on its own: LoRA fine-tuning of the LM as a reranker on relevance labels.

``make train EXP=rabtriever_tiny`` already runs this as its first, cached stage (``reranker_sft``,
docs/stages.md); this command writes one such teacher anywhere, e.g. to compare settings by hand. It uses
relevance labels: report it as label use. The LoRA weights are merged and the LM is saved as a plain HF
folder, usable as ``model.frozen_lm.name_or_path`` (teacher and student LM) of a Rabtriever run::

    python -m experiments.rabtriever_sft --out runs/rabtriever_sft_teacher --steps 200 --loss listwise
    python -m experiments.train exp=rabtriever_tiny model.frozen_lm.name_or_path=runs/rabtriever_sft_teacher
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning as L

from lightning_modules.rabtriever.reranker_sft import RerankerSFTModule


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
    parser.add_argument("--loss", choices=["pointwise", "listwise"], default="pointwise")
    args = parser.parse_args(argv)
    L.seed_everything(args.seed)
    data = RetrievalDataModule(
        path=args.data, batch_size=args.batch_size, group_size=args.group_size, seed=args.seed
    )
    prompt = {**_model_config_prompt(), "max_document_tokens": args.max_document_tokens}
    module = RerankerSFTModule(args.model, prompt=prompt, lr=args.lr, loss=args.loss)
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
