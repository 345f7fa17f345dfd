"""The teacher's SFT on its own: LoRA fine-tuning of the LM as a reranker on relevance labels.

``make train EXP=rabtriever_tiny`` already runs this as its first, cached stage (``reranker_sft``,
docs/stages.md); this command writes one such teacher anywhere, e.g. to compare settings by hand. It uses
relevance labels: report it as label use. The LoRA weights are merged and the LM is saved as a plain HF
folder, usable as ``model.frozen_lm.name_or_path`` (teacher and student LM) of a Rabtriever run::

    python -m experiments.rabtriever_sft --out runs/rabtriever_sft_teacher --steps 200 --loss listwise
    python -m experiments.train exp=rabtriever_tiny model.frozen_lm.name_or_path=runs/rabtriever_sft_teacher

Mistakes print one ``error:`` line and exit 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.cli import ArgumentParser, UsageError, go_offline, run_command


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m experiments.rabtriever_sft",
        description="LoRA-fine-tune Rabtriever's teacher on relevance labels",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the merged, fine-tuned LM")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="hotpotqa")
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--group-size", type=positive_int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-document-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--loss", choices=["pointwise", "listwise"], default="pointwise")
    return parser.parse_args(argv)


def fine_tune(argv: list[str]) -> Path:
    """Fine-tune and save the merged teacher; return its folder."""
    args = parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; name a folder for the fine-tuned LM")
    go_offline()  # before the imports below load huggingface_hub
    import lightning as L

    from datamodules.retrieval import RetrievalDataModule
    from lightning_modules.rabtriever.reranker_sft import RerankerSFTModule

    L.seed_everything(args.seed)
    data = RetrievalDataModule(
        path=args.data, batch_size=args.batch_size, group_size=args.group_size, seed=args.seed
    )
    data.setup("fit")  # the data files are read and checked before the LM loads
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


def main(argv: list[str] | None = None) -> int:
    return run_command(fine_tune, argv)


if __name__ == "__main__":
    sys.exit(main())
