"""The LLMEmbedderModule LightningModule on tiny random models, and smoke runs of its experiments (debug=tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from datamodules.batch import RetrievalBatch
from datamodules.llm_embedder_tasks.datamodule import (
    TaskGroupDataset,
    collate_task_groups,
    id_code,
    load_task_examples,
)
from experiments import CONFIG_DIR
from experiments.train import train
from lightning_modules.llm_embedder.module import LLMEmbedderModule
from lightning_modules.llm_embedder.teacher import ScoringItem
from lightning_modules.losses.llm_embedder import same_or_positive_keys
from tests.helpers import llm_embedder_tiny_overrides

EMBEDDER = {"name_or_path": "tiny-bert", "pooling": "mean", "max_length": 32}


def make_module(tmp_path: Path, **kwargs) -> LLMEmbedderModule:
    teacher = {"cache_dir": str(tmp_path / "scores"), "show_progress": False, "key_max_tokens": 24}
    return LLMEmbedderModule(
        embedder=EMBEDDER, frozen_lm={"name_or_path": "tiny-llama"}, teacher=teacher, **kwargs
    )


def batch_of(task: str, spec: dict, group: int, size: int = 3) -> RetrievalBatch:
    examples = load_task_examples(task, spec, tiny=True)
    dataset = TaskGroupDataset({task: examples}, {task: group}, seed=0)
    return collate_task_groups([dataset[(task, i, 0)] for i in range(size)])


def test_graded_distillation_step_trains_the_embedder_only(tmp_path):
    module = make_module(tmp_path)
    batch = batch_of("qa", {"max_queries": 3, "num_candidates": 4}, group=4)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    embedder_grads = [p.grad for p in module.embedder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in embedder_grads)
    assert all(p.grad is None for p in module.frozen_lm.parameters())
    # the step's teacher scores are on disk now: a lookup needs no LM call
    item = ScoringItem(batch.documents[0][0], batch.queries[0], batch.first_answers[0])
    cache = module.teacher.cache(module.task_settings["qa"].template)
    assert not cache.missing(module.teacher.keys(module.task_settings["qa"].template, [item]))


def test_contrastive_task_needs_no_teacher_and_kl_task_uses_it(tmp_path):
    module = LLMEmbedderModule(embedder=EMBEDDER, frozen_lm=None)
    tool = batch_of("tool", {"num_candidates": 8}, group=4)
    assert torch.isfinite(module.training_step(tool, 0))
    with pytest.raises(ValueError, match="frozen_lm is null"):
        module.training_step(batch_of("qa", {"max_queries": 3, "num_candidates": 4}, group=4), 0)
    kl_module = make_module(tmp_path, tasks={"lrlm": {"contrastive_weight": 0.2}})
    lrlm = batch_of("lrlm", {"chunk_words": 40, "num_candidates": 3}, group=3, size=2)
    assert torch.isfinite(kl_module.training_step(lrlm, 0))


def test_shared_tool_keys_are_not_negatives_of_each_other():
    codes = torch.tensor([id_code(i) for i in ["a", "b", "a", "c"]])
    exclude = same_or_positive_keys(codes, None, torch.tensor([0, 2]))
    assert exclude.tolist() == [[True, False, True, False], [True, False, True, False]]
    labels = torch.tensor([[False, True], [False, False]])  # query 0's second key is a labelled positive too
    exclude = same_or_positive_keys(codes, labels, torch.tensor([0, 2]))
    assert exclude.tolist() == [[True, True, True, False], [True, False, True, False]]


def test_eval_uses_the_eval_task_instructions(tmp_path):
    module = LLMEmbedderModule(embedder=EMBEDDER, frozen_lm=None)
    plain = module.embedder.encode(["hello"], "query")
    instructed = module.encode_queries(["hello"])
    assert not torch.allclose(plain, instructed)
    assert torch.allclose(
        module.embedder.encode([module.task_settings["qa"].query_instruction + "hello"], "query"), instructed
    )
    assert module.untrained_score_key()["task_instructions"]["query"].startswith("Represent this query")


@pytest.mark.parametrize("experiment", ["llm_embedder_tiny", "llm_embedder_tiny_minilm", "llm_embedder_base"])
def test_experiment_smoke_runs_offline(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [*llm_embedder_tiny_overrides(experiment, train=True), f"output_root={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    results = train(cfg, overrides)
    assert results["budget"]["steps"] == 2
    assert results["metrics"]["before"] is not None and results["metrics"]["after"] is not None
    report = json.loads((Path(results["run_dir"]) / "teacher_scoring.json").read_text())
    assert report["reward"] == "nll" and report["qa"]["task"] == "qa" and report["qa"]["items"] > 0


def test_base_experiment_composes_and_falls_back_to_local_samples_when_tiny():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["exp=llm_embedder_base"])
    assert cfg.model.optimizer.lr == 5.0e-06 and cfg.data.batch_size == 100 and cfg.trainer.max_steps == 10000
    assert cfg.model.temperature == 0.01 and cfg.data.tasks.qa.group_size == 8
    examples = {
        name: load_task_examples(name, dict(spec), tiny=True) for name, spec in cfg.data.tasks.items()
    }
    assert {e[0].task for e in examples.values()} == {"qa", "tool", "convsearch", "icl", "lrlm"}
    assert all(examples.values())


def test_prescore_second_run_reads_everything_from_the_cache(tmp_path, monkeypatch):
    from experiments.llm_embedder_prescore import prescore

    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        "exp=llm_embedder_tiny",
        "debug=tiny",
        "data.tasks.qa.max_queries=3",
        "model.teacher.show_progress=false",
    ]
    first = prescore(overrides)["tasks"]["qa"]
    second = prescore(overrides)["tasks"]["qa"]
    assert (first["items"], first["cached_before"], first["scored"]) == (15, 0, 15)
    assert (second["cached_before"], second["scored"]) == (15, 0)
    assert first["cache_dir"] == second["cache_dir"]


def test_prescore_and_agreement_name_a_wrong_config_key():
    from experiments.config_check import ConfigError
    from experiments.llm_embedder_agreement import agreement
    from experiments.llm_embedder_prescore import prescore

    for command in (prescore, agreement):
        with pytest.raises(ConfigError, match="model.teacher.rewrd"):
            command(["exp=llm_embedder_tiny", "debug=tiny", "model.teacher.rewrd=nll"])
