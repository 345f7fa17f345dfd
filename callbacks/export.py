"""Export the trained embedder at the end of training as a sentence-transformers / HF folder."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


def model_card(method: str, hparams: dict, metrics: dict | None = None) -> str:
    lines = [f"# {method} embedder", "", "Trained with llm-supervised-retrievers.", ""]
    if metrics:
        lines += ["## Scores", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()] + [""]
    lines += ["## Hyperparameters", "", "```json", json.dumps(hparams, indent=2, default=str), "```", ""]
    return "\n".join(lines)


class ExportEmbedder(L.Callback):
    def __init__(self, dirname: str = "export"):
        self.dirname = dirname
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(pl_module, "embedder", None) is None:
            return
        self.path = Path(trainer.default_root_dir) / self.dirname
        pl_module.export(self.path, model_card=model_card(type(pl_module).__name__, dict(pl_module.hparams)))
        rank_zero_info(f"exported the embedder to {self.path}")
