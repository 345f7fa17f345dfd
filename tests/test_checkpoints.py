"""Checkpoints: no frozen-LM weights, loadable with weights_only=True, and resumable."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch

from datamodules.retrieval import RetrievalDataModule
from lightning_modules.contrastive import ContrastiveRetriever
from tests.helpers import run_experiment


def test_checkpoint_has_no_frozen_lm_and_loads_weights_only(tmp_path, tiny_bert_path, tiny_llama_path):
    model = ContrastiveRetriever(
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

    restored = ContrastiveRetriever.load_from_checkpoint(path, weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)


def test_rerun_of_a_finished_run_resumes_at_the_end_and_logs_its_final_evaluation_once(tmp_path, capsys):
    first = run_experiment(["exp=default", "debug=tiny"], tmp_path)
    assert first["resumed_from"] is None and first["budget"]["steps"] == 2
    second = run_experiment(["exp=default", "debug=tiny"], tmp_path)
    assert second["run_dir"] == first["run_dir"]
    assert second["resumed_from"].endswith("checkpoints/last.ckpt")
    assert second["budget"]["steps"] == 2  # already finished: nothing retrained
    assert second["metrics"]["before"] == first["metrics"]["before"]
    assert second["metrics"]["after"] == first["metrics"]["after"]
    with (Path(first["run_dir"]) / "metrics.csv").open() as handle:
        evaluated = [row["step"] for row in csv.DictReader(handle) if row.get("val/ndcg@10")]
    assert evaluated == ["0", "1"]  # before training, and the final evaluation once (not again on the rerun)
    # under debug=tiny the summary names the tiny model that ran, not the real start
    assert (
        first["start"]
        == "tiny-bert (debug=tiny stand-ins for: all-minilm-l6-v2 (mean pooling, max length 128))"
    )
    assert "start tiny-bert (debug=tiny stand-ins for: all-minilm-l6-v2" in capsys.readouterr().out
