"""``make plan``: the meta-device estimate against the measured CPU peak of the same step, the recipes'
defaults fit, and bad input is refused."""

from __future__ import annotations

import pytest

from bench.plan.__main__ import main
from bench.plan.recipe import plan_recipe
from bench.plan.validate import compare

NO_RECOMPUTE = ("model.encode_chunk_size=0", "model.embedder.gradient_checkpointing=false")


@pytest.mark.parametrize(
    "experiment, overrides",
    [
        ("dream_3b", ("debug=tiny", "data.batch_size=2", *NO_RECOMPUTE)),
        (
            "llm2vec_gen_qwen3_0.6b",
            ("debug=tiny", "model.loss_chunk_size=0", "model.frozen_lm_checkpointing=false"),
        ),
        ("llm2vec_gen_qwen3_0.6b", ("debug=tiny",)),
        ("rabtriever_qwen2_7b", ("debug=tiny",)),
    ],
)
def test_the_estimate_is_within_25_percent_of_the_measured_cpu_peak(experiment, overrides):
    result = compare(experiment, list(overrides))
    assert 0.75 <= result.ratio <= 1.25, (result.estimated, result.measured)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["dream_tiny", "llm2vec_gen_tiny", "rabtriever_tiny"])
def test_the_estimate_is_within_25_percent_at_smollm2_size(experiment):
    """The lab recipes at full SmolLM2-135M size (real weights' shapes, random values): measured here
    1.093 (DREAM), 0.998 (LLM2Vec-Gen), 1.101 (Rabtriever); LLM-Embedder's 1.29 over-counts (not held)."""
    result = compare(experiment, [])
    assert 0.75 <= result.ratio <= 1.25, (result.estimated, result.measured)


def test_chunked_candidates_trade_kept_activations_for_a_recomputed_chunk():
    plain = plan_recipe("dream_3b", 1, "ddp", ["debug=tiny", *NO_RECOMPUTE])["per_gpu_gib"]
    chunked = plan_recipe("dream_3b", 1, "ddp", ["debug=tiny", "model.encode_chunk_size=4"])["per_gpu_gib"]
    assert plain["recompute"] == 0 and chunked["recompute"] > 0
    assert chunked["activations"] < plain["activations"] / 2


CLUSTER_RECIPES = (
    "dream_0.5b",
    "dream_1b",
    "dream_3b",
    "llm_embedder_base",
    "llm2vec_gen_qwen3_0.6b",
    "llm2vec_gen_qwen2.5_1.5b",
    "rabtriever_qwen2_7b",
)


@pytest.mark.parametrize("experiment", CLUSTER_RECIPES)
def test_every_cluster_recipe_plans_under_the_limit_with_its_defaults(experiment):
    """The full-size recipe on its own GPU count (``make plan-all``), counted on meta: ≤ 70 GiB per GPU."""
    plan = plan_recipe(experiment, None, "ddp", [])
    assert plan["fits"], plan["per_gpu_gib"]
    assert plan["per_gpu_gib"]["peak"] > plan["per_gpu_gib"]["parameters"] > 0


def test_a_recipe_plan_and_a_bad_experiment(capsys):
    assert main(["rabtriever_qwen2_7b", "--gpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "verdict: fits" in out and "parameters" in out
    assert main(["no_such_recipe"]) == 2
    assert "error: unknown experiment 'no_such_recipe'" in capsys.readouterr().err
