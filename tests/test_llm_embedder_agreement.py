"""The teacher-vs-student top-1 diagnostic: counts by hand, and the CLI path on tiny models (cache reuse,
trained-checkpoint loading, the missing-labels error)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from datamodules.llm_embedder_tasks.datamodule import load_task_examples
from experiments import CONFIG_DIR
from experiments.llm_embedder_agreement import agreement, load_student_checkpoint, top1_agreement
from experiments.train import train
from tests.helpers import llm_embedder_tiny_overrides


def test_top1_agreement_counts_match_a_hand_count():
    t = torch.tensor
    teacher = [t([0.9, 0.1, 0.0]), t([0.1, 0.8, 0.1]), t([0.5, 0.2, 0.3]), t([0.3, 0.2, 0.1]), t([1.0, 0.0])]
    student = [t([0.2, 0.7, 0.1]), t([0.1, 0.9, 0.0]), t([0.6, 0.1, 0.3]), t([0.1, 0.1, 0.9]), t([0.0, 1.0])]
    labels = [t([1, 0, 0]), t([0, 1, 0]), t([0, 0, 1]), t([0, 1, 1]), t([0, 0])]
    # q0: teacher right (0), student wrong (1); q1: both right, same top-1; q2: both wrong, same top-1 (0);
    # q3: teacher wrong (0), student right (2); q4: no positive, skipped.
    assert top1_agreement(teacher, student, labels) == {
        "questions": 4,
        "teacher_right": 2,
        "student_right": 2,
        "teacher_right_student_wrong": 1,
        "student_right_teacher_wrong": 1,
        "same_top1": 2,
    }


def test_top1_agreement_names_the_question_whose_shapes_differ():
    with pytest.raises(ValueError, match="question 1: teacher"):
        top1_agreement(
            [torch.zeros(3), torch.zeros(3)], [torch.zeros(3), torch.zeros(2)], [torch.ones(3), torch.ones(3)]
        )
    with pytest.raises(ValueError, match="one entry per question"):
        top1_agreement([torch.zeros(3)], [], [])


def test_agreement_reads_the_cache_and_loads_the_trained_student(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    common = llm_embedder_tiny_overrides("llm_embedder_tiny_minilm")
    train_overrides = [
        *llm_embedder_tiny_overrides("llm_embedder_tiny_minilm", train=True),
        f"output_root={tmp_path}",
        "model.optimizer.lr=1e-2",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=train_overrides)
    results = train(cfg, train_overrides)
    checkpoint = Path(results["run_dir"]) / "checkpoints" / "last.ckpt"
    chunks_after_training = sorted((tmp_path / "cache").rglob("chunk-*.pt"))

    labelled = common + ["data.tasks.qa.use_labels=true"]
    untrained = agreement(labelled)["tasks"]["qa"]
    trained = agreement(labelled, checkpoint)["tasks"]["qa"]
    # the labels select the same candidates, so every teacher score comes from the training run's cache
    assert sorted((tmp_path / "cache").rglob("chunk-*.pt")) == chunks_after_training
    examples = load_task_examples("qa", {**dict(cfg.data.tasks.qa), "use_labels": True}, tiny=True)
    assert untrained["questions"] == trained["questions"] == sum(any(e.labels) for e in examples)
    # the teacher does not depend on the student
    assert untrained["teacher_right"] == trained["teacher_right"]
    for counts in (untrained, trained):
        assert counts["teacher_right"] - counts["student_right"] == (
            counts["teacher_right_student_wrong"] - counts["student_right_teacher_wrong"]
        )

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        module = instantiate(compose(config_name="config", overrides=labelled).model, _convert_="all")
    fresh = {k: v.clone() for k, v in module.embedder.state_dict().items()}
    load_student_checkpoint(module, checkpoint)
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    loaded = module.embedder.state_dict()
    assert all(torch.equal(loaded[k], stored[f"embedder.{k}"]) for k in loaded)
    assert any(not torch.equal(loaded[k], fresh[k]) for k in loaded)  # lr 1e-2 for 2 steps moved weights

    with pytest.raises(ValueError, match="data.tasks.qa.use_labels=true"):
        agreement(common)
    with pytest.raises(ValueError, match="missing.ckpt"):
        load_student_checkpoint(module, tmp_path / "missing.ckpt")
