"""Checkpoints: no frozen-LM weights, loadable with weights_only=True, and resumable."""

from __future__ import annotations

import lightning as L
import torch

from datamodules.retrieval import RetrievalDataModule
from lightning_modules.contrastive.module import ContrastiveModule
from tests.helpers import run_experiment


def test_checkpoint_has_no_frozen_lm_and_loads_weights_only(tmp_path, tiny_bert_path, tiny_llama_path):
    model = ContrastiveModule(
        embedder={"name_or_path": tiny_bert_path}, frozen_lm={"name_or_path": tiny_llama_path}
    )
    dm = RetrievalDataModule(path="tiny_hotpotqa", group_size=2, batch_size=2)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # no pickled objects
    keys = checkpoint["state_dict"].keys()
    assert any(k.startswith("embedder.") for k in keys)
    assert not any(k.startswith("frozen_lm.") for k in keys)
    assert checkpoint["hyper_parameters"]["frozen_lm"] == {"name_or_path": tiny_llama_path}

    restored = ContrastiveModule.load_from_checkpoint(path, weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)


def test_rerun_resumes_from_last_checkpoint(tmp_path):
    first = run_experiment(["exp=default", "debug=tiny"], tmp_path)
    assert first["resumed_from"] is None and first["budget"]["steps"] == 2
    second = run_experiment(["exp=default", "debug=tiny"], tmp_path)
    assert second["run_dir"] == first["run_dir"]
    assert second["resumed_from"].endswith("checkpoints/last.ckpt")
    assert second["budget"]["steps"] == 2  # already finished: nothing retrained
    assert second["metrics"]["before"] == first["metrics"]["before"]
