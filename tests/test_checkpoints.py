"""Checkpoints: the trained parameters only (no frozen LM, no frozen LoRA base), loadable with
weights_only=True, strict about trained keys, and resumable with identical losses."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.retrieval import RetrievalDataModule
from lightning_modules.contrastive.module import ContrastiveModule
from tests.helpers import quiet_trainer, run_experiment


def test_checkpoint_has_no_frozen_lm_and_loads_weights_only(tmp_path, tiny_bert_path, tiny_llama_path):
    model = ContrastiveModule(
        embedder={"name_or_path": tiny_bert_path}, frozen_lm={"name_or_path": tiny_llama_path}
    )
    dm = RetrievalDataModule(path="tiny_hotpotqa", group_size=2, batch_size=2)
    trainer = quiet_trainer(tmp_path)
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


def lora_module(seed: int) -> ContrastiveModule:
    L.seed_everything(seed)
    return ContrastiveModule(
        embedder={"name_or_path": "tiny-llama", "pooling": "mean", "max_length": 32, "lora": {"r": 4}},
        frozen_lm={"name_or_path": "tiny-llama"},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2},
        scheduler={"kind": "constant", "warmup_ratio": 0.0},
    )


def fit_lora(module: ContrastiveModule, root, max_steps: int, ckpt_path=None) -> tuple[L.Trainer, dict]:
    losses: dict[int, float] = {}

    class RecordLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses[trainer.global_step] = float(outputs["loss"])

    trainer = quiet_trainer(root, max_steps, callbacks=[RecordLoss()])
    data = RetrievalDataModule(path="tiny_hotpotqa", group_size=2, batch_size=2, seed=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    return trainer, losses


def test_lora_checkpoints_hold_the_trained_parameters_only_and_resume_exactly(tmp_path):
    uninterrupted = lora_module(seed=0)
    _, expected = fit_lora(uninterrupted, tmp_path / "a", max_steps=4)

    first = lora_module(seed=0)
    trainer, _ = fit_lora(first, tmp_path / "b", max_steps=2)
    path = tmp_path / "b" / "step2.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    trained = {n: p for n, p in first.named_parameters() if p.requires_grad}
    assert set(state) == set(trained) and all("lora_" in k for k in state), "LoRA weights only"
    stored_bytes = sum(v.numel() * v.element_size() for v in state.values())
    full_bytes = sum(v.numel() * v.element_size() for v in first.state_dict().values())
    assert stored_bytes == sum(p.numel() * p.element_size() for p in trained.values())
    assert stored_bytes < full_bytes / 10, "the frozen embedder base and the frozen LM are not written"

    resumed = lora_module(seed=1)  # other LoRA initial weights: they must come from the checkpoint
    _, losses = fit_lora(resumed, tmp_path / "b", max_steps=4, ckpt_path=str(path))
    assert losses == {step: expected[step] for step in (3, 4)}, "identical losses after the resume"
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_strict_loading_still_refuses_a_missing_or_unknown_trained_key(tmp_path):
    module = lora_module(seed=0)
    checkpoint = {"state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    lora_key = next(iter(checkpoint["state_dict"]))
    for broken, problem in (
        ({k: v for k, v in checkpoint["state_dict"].items() if k != lora_key}, "Missing key"),
        ({**checkpoint["state_dict"], "embedder.no_such_adapter": torch.zeros(1)}, "Unexpected key"),
    ):
        restored = lora_module(seed=1)
        loaded = {"state_dict": dict(broken)}
        restored.on_load_checkpoint(loaded)
        with pytest.raises(RuntimeError, match=problem):
            restored.load_state_dict(loaded["state_dict"], strict=True)
