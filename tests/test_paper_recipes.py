"""The cluster recipes are the papers' experiments (issue 16; docs/<method>.md "Paper vs this recipe"): each
composes at full size with the paper's values and passes the config checks (model files and this machine's
hardware aside: they name hub models and GPUs). Their debug=tiny smoke runs are tests/test_experiments_smoke.py."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments import config_check
from tests.helpers import compose_config

CLUSTER_RECIPES = [
    "dream_0.5b",
    "dream_1b",
    "dream_3b",
    "llm2vec_gen_qwen2.5_1.5b",
    "llm2vec_gen_qwen3_0.6b",
    "llm_embedder_base",
    "rabtriever_qwen2_7b",
]


def recipe(name: str, monkeypatch) -> dict:
    """``exp=<name>`` at full size, checked (keys, types, stages, combinations) and resolved."""
    monkeypatch.setattr(config_check, "check_hardware", lambda trainer: None)  # GPUs: not on this machine
    monkeypatch.setattr(config_check, "check_model_files", lambda cfg, offline: None)  # hub weights
    monkeypatch.setenv("LSR_CACHE_DIR", "/LSR_CACHE")
    cfg = compose_config([f"exp={name}"])
    config_check.check_config(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", [n for n in CLUSTER_RECIPES if not n.startswith("rabtriever")])
def test_each_cluster_recipe_evaluates_on_nanobeir_during_training_and_a_full_set_at_the_end(
    name, monkeypatch
):
    mteb = recipe(name, monkeypatch)["callbacks"]["mteb"]
    assert mteb["tasks"] == ["nanobeir"] and mteb["final_tasks"] and mteb["tiny"] is False


def test_llm_embedder_recipe_uses_hard_labels_rank_aware_rewards_and_the_reference_lengths(monkeypatch):
    cfg = recipe("llm_embedder_base", monkeypatch)
    model, data = cfg["model"], cfg["data"]
    assert model["graded_order"] == "positive_first" and model["teacher"]["reward"] == "rank_aware"
    assert model["teacher"]["key_max_tokens"] == 512 and model["embedder"]["max_length"] == 256
    assert model["scheduler"] == {"kind": "linear", "warmup_ratio": 0.1}
    kinds = {task["kind"] for task in data["tasks"].values()}
    assert kinds == {"qa", "chat", "convsearch", "tool", "icl", "lrlm"}  # Multi-Session Chat included
    assert all(task["source"] == "hub" for task in data["tasks"].values())
    assert data["tasks"]["qa"]["on_missing"] == "skip"  # MS MARCO's "No Answer Present." rows
    assert cfg["callbacks"]["mteb"]["final_tasks"] == ["beir"]


@pytest.mark.parametrize("name", ["dream_0.5b", "dream_1b", "dream_3b"])
def test_dream_recipes_mine_label_free_shuffled_candidates_after_a_bos_without_eos(name, monkeypatch):
    cfg = recipe(name, monkeypatch)
    model = cfg["model"]
    assert (model["candidates"], model["shuffle_mined"], model["prepend_bos"]) == ("mined", True, True)
    assert model["embedder"]["append_eos"] is False  # the released DREAM cards pool the last token, no EOS
    assert [s["name"] for s in cfg["data"]["hub_sources"]] == ["msmarco", "nq", "hotpotqa"]
    assert cfg["data"]["on_missing"] == "skip"  # MS MARCO's "No Answer Present." rows are left out, counted
    assert cfg["callbacks"]["mteb"]["final_tasks"] == ["beir", "rteb_eng_public"]


@pytest.mark.parametrize("name", ["llm2vec_gen_qwen2.5_1.5b", "llm2vec_gen_qwen3_0.6b"])
def test_llm2vec_gen_recipes_follow_the_reference_tokens_schedule_and_data(name, monkeypatch):
    cfg = recipe(name, monkeypatch)
    model = cfg["model"]
    assert (model["num_special_tokens"], model["num_pooled_tokens"]) == (10, 10)  # the reference's V2
    assert model["student_prompt"] == "raw"  # the reference's training input: the raw question
    assert model["scheduler"]["kind"] == "linear" and model["scheduler"]["warmup_steps"] == 100
    assert model["scheduler"]["total_steps"] == 20000 and cfg["trainer"]["max_steps"] == 5000
    assert cfg["data"]["queries"] == "tulu" and cfg["data"]["max_train_queries"] == 160000
    assert cfg["callbacks"]["mteb"]["final_tasks"] == ["mteb_eng_v2_retrieval"]


def test_rabtriever_recipe_distils_a_trained_reranker_on_policy_with_a_vocabulary_kl(monkeypatch):
    cfg = recipe("rabtriever_qwen2_7b", monkeypatch)
    model = cfg["model"]
    assert model["on_policy_top_m"] == 4  # the abstract: on-policy distillation
    assert model["kl_over"] == "vocabulary"  # "reverse KL of LLM logits"
    assert "reranker_sft" in cfg["stages"]  # the teacher is trained first (the paper's first stage)
    assert "reranker_sft" in model["frozen_lm"]["name_or_path"]  # ... and is the frozen LM
