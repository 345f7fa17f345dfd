"""Defaults stated once: every experiment resolves to the values it had before its files listed only
differences (reference: tests/data/resolved_configs_5ff442e.json, dumped at commit 5ff442e, main before the restructure of the config files).

The reference is every ``exp=<name>`` and ``exp=<name> debug=tiny`` composed and resolved at that commit
(``LSR_CACHE_DIR=/LSR_CACHE``; ``LSR_OUTPUT_ROOT`` and ``TOOLBENCH_QUERIES`` unset). The deliberate changes are named and checked here, never ignored wholesale:
- ``model.optimizer`` became a ``_partial_`` target: ``torch.optim.AdamW`` with the same arguments;
- every model block (embedder, frozen LM, Rabtriever's first stage) carries ``tiny: ${tiny_models}``, the
  explicit flag that replaced the ``LSR_TINY_MODELS`` environment variable;
- the wiring ``experiments.train`` used to add silently is config now: ``trainer.plugins`` (the atomic
  checkpoint IO) and the ``random_state``, ``preemption`` and ``step_timer`` callbacks;
- the LightningModules were renamed ``<Method>Module`` in ``lightning_modules/<method>/module.py`` (core);
- issue 16 made the cluster recipes the papers' experiments: the keys of :data:`PAPER_RECIPE_CHANGES` changed
  on purpose, and ``tests/test_paper_recipes.py`` checks their new values.
- ``callbacks.retrieval_eval`` gained ``index_dtype`` (float16) and ``cache_encodings`` (true): the evaluation
  that scales (per-rank half-precision shards, the start's encodings cached; docs/evaluation.md), and
  ``training_corpus_size`` (null: the whole corpus at every evaluation, as before);
- the memory plan (``make plan``, issue 15) added chunking/checkpointing options and turned them on in the
  cluster recipes, with a last.ckpt every 200 steps there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_config

REFERENCE = json.loads((Path(__file__).parent / "data" / "resolved_configs_5ff442e.json").read_text())
WIRING_CALLBACKS = {
    "random_state": "callbacks.resume.RandomStateCheckpoint",
    "preemption": "callbacks.resume.PreemptionAtBatchEnd",
    "step_timer": "callbacks.step_timer.StepTimer",
}
RENAMED_MODULES = {  # model._target_ now: before
    "lightning_modules.contrastive.module.ContrastiveModule": "lightning_modules.contrastive.ContrastiveRetriever",
    "lightning_modules.dream.module.DreamModule": "lightning_modules.dream.DreamRetriever",
    "lightning_modules.llm_embedder.module.LLMEmbedderModule": "lightning_modules.llm_embedder.LLMEmbedder",
    "lightning_modules.llm2vec_gen.module.LLM2VecGenModule": "lightning_modules.llm2vec_gen.LLM2VecGen",
    "lightning_modules.rabtriever.module.RabtrieverModule": "lightning_modules.rabtriever.module.Rabtriever",
}
DREAM_RECIPE_CHANGES = (
    "data.",
    "callbacks.",
    "meta.",
    "model.candidates",
    "model.mine_with",
    "model.mined_k",
    "model.embedder.append_eos",
    "model.embedder.gradient_checkpointing",  # the memory plan (make plan): chunked, checkpointed embedder
    "model.encode_chunk_size",
)
LLM2VEC_GEN_RECIPE_CHANGES = (
    "data.",
    "callbacks.",
    "model.scheduler.",
    "model.loss_chunk_size",  # the memory plan (make plan)
    "model.frozen_lm_checkpointing",
    "model.student_prompt",  # issue 16: the raw question, as the reference trains
)
PAPER_RECIPE_CHANGES = {  # experiment: config key prefixes changed by issue 16
    "llm_embedder_base": (
        "data.",
        "callbacks.",
        "meta.",
        "model.graded_order",
        "model.teacher.reward",
        "model.scheduler.warmup_ratio",
    ),
    "dream_0.5b": DREAM_RECIPE_CHANGES,
    "dream_1b": DREAM_RECIPE_CHANGES,
    "dream_3b": DREAM_RECIPE_CHANGES,
    "llm2vec_gen_qwen2.5_1.5b": LLM2VEC_GEN_RECIPE_CHANGES,
    "llm2vec_gen_qwen3_0.6b": LLM2VEC_GEN_RECIPE_CHANGES,
    "rabtriever_qwen2_7b": (
        "callbacks.resume_checkpoint.every_n_train_steps",
    ),  # cluster cadence (make plan)
}
NEW_KEYS = (  # options added since: issue 16's recipe options, the memory plan's chunking/checkpointing
    "model.shuffle_mined",
    "model.prepend_bos",
    "model.num_pooled_tokens",
    "model.encode_chunk_size",
    "model.loss_chunk_size",
    "model.frozen_lm_checkpointing",
    "model.student_prompt",
)
CHECKPOINT_IO = [{"_target_": "lightning_modules.checkpoint_io.AtomicCheckpointIO"}]


def drop_tiny_flags(node: Any, tiny: bool, where: str = "") -> list[str]:
    """Remove ``tiny`` from every block that names a model; return where it was found."""
    found = []
    if isinstance(node, dict):
        if "name_or_path" in node:
            assert node.pop("tiny", None) is tiny, f"{where}: tiny must follow tiny_models ({tiny})"
            found.append(where)
        for key, value in node.items():
            found += drop_tiny_flags(value, tiny, f"{where}.{key}" if where else key)
    return found


def undo_deliberate_changes(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    optimizer = config["model"]["optimizer"]
    assert (optimizer.pop("_target_"), optimizer.pop("_partial_")) == ("torch.optim.AdamW", True)
    assert config["trainer"].pop("plugins") == CHECKPOINT_IO
    for name, target in WIRING_CALLBACKS.items():
        assert config["callbacks"].pop(name) == {"_target_": target}
    drop_tiny_flags(config, config["tiny_models"])
    evaluation = config["callbacks"].get("retrieval_eval")
    if evaluation is not None:
        assert (evaluation.pop("index_dtype"), evaluation.pop("cache_encodings")) == ("float16", True)
        assert evaluation.pop("training_corpus_size") is None
    config["model"]["_target_"] = RENAMED_MODULES[config["model"]["_target_"]]
    return config


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        return [
            line
            for key in sorted(expected.keys() | actual.keys())
            for line in differences(
                expected.get(key, "<absent>"), actual.get(key, "<absent>"), f"{where}.{key}" if where else key
            )
        ]
    return [] if expected == actual else [f"{where}: was {expected!r}, now {actual!r}"]


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_every_experiment_resolves_to_its_values_before_the_restructure(case, monkeypatch):
    monkeypatch.delenv("LSR_OUTPUT_ROOT", raising=False)
    monkeypatch.delenv("TOOLBENCH_QUERIES", raising=False)
    monkeypatch.setenv("LSR_CACHE_DIR", "/LSR_CACHE")  # stage outputs live under the cache root (as dumped)
    experiment, variant = case.split("|")
    overrides = [f"exp={experiment}", *(["debug=tiny"] if variant == "tiny" else [])]
    resolved = OmegaConf.to_container(compose_config(overrides), resolve=True)
    changed = PAPER_RECIPE_CHANGES.get(experiment, ())
    found = differences(REFERENCE[case], undo_deliberate_changes(resolved))
    found = [line for line in found if not (line.startswith(NEW_KEYS) and "was '<absent>'" in line)]
    assert [line for line in found if not line.startswith(changed)] == []
