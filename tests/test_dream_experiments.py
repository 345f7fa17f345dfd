"""DREAM experiments smoke-run end to end with debug=tiny (tiny random models, the in-repo fixture)."""

from __future__ import annotations

import pytest

from tests.helpers import compose_config, run_experiment


def test_dream_tiny_smoke_runs(tmp_path):
    results = run_experiment(["exp=dream_tiny", "debug=tiny", "logger=csv"], tmp_path)
    assert results["method"] == "dream" and results["budget"]["steps"] == 2
    assert results["metrics"]["before"] and results["metrics"]["after"]
    assert "ndcg@10" in results["metrics"]["after"]


def test_cluster_experiment_smoke_runs_on_its_tiny_family(tmp_path):
    # shrunk further than debug=tiny alone: this checks wiring (qwen2 family, last-token pooling, LoRA, EOS)
    overrides = [
        "exp=dream_0.5b",
        "debug=tiny",
        "logger=csv",
        "model.max_document_tokens=16",
        "data.group_size=3",
    ]
    results = run_experiment(overrides, tmp_path)
    assert results["budget"]["steps"] == 2 and results["metrics"]["after"]


@pytest.mark.parametrize("experiment", ["dream_tiny_minilm", "dream_1b", "dream_3b"])
def test_other_dream_experiments_compose_for_the_dream_module(experiment):
    cfg = compose_config([f"exp={experiment}"])
    assert cfg.model._target_ == "lightning_modules.dream.module.DreamModule"
    assert cfg.name == experiment and cfg.meta.method == "dream"
    assert cfg.model.frozen_lm.name_or_path != cfg.model.embedder.name_or_path or experiment.startswith(
        "dream_tiny"
    )
