"""Staged pipelines (experiments/stage_runner.py): outputs keyed by their resolved settings, checked configs,
every cluster and lab pipeline smoke-running through its stages under debug=tiny, and reuse on the second run
(builds counted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments import stage_builders
from experiments.config_check import ConfigError, check_config
from experiments.stage_runner import stage_path, stage_root, used_stages
from tests.helpers import compose_config, run_experiment

REPO = Path(__file__).resolve().parents[1]


def teacher_and_mntp(overrides: list[str]) -> tuple[str, Path, Path]:
    cfg = compose_config(["exp=llm2vec_gen_tiny", *overrides])
    return cfg.model.teacher.name_or_path, stage_path(cfg, "llm2vec_mntp"), stage_path(cfg, "llm2vec_teacher")


def test_stage_outputs_are_keyed_by_their_resolved_settings():
    teacher, mntp, simcse = teacher_and_mntp([])
    assert (
        teacher == str(simcse) and simcse.parent == stage_root() and simcse.name.startswith("llm2vec_simcse-")
    )
    _, mntp_more, simcse_more = teacher_and_mntp(["stages.llm2vec_mntp.steps=7"])
    assert mntp_more != mntp and simcse_more != simcse  # a changed upstream stage changes what builds on it
    _, mntp_same, simcse_same = teacher_and_mntp(["stages.llm2vec_mntp.label_use=described differently"])
    assert (mntp_same, simcse_same) == (mntp, simcse)
    _, mntp_tiny, _ = teacher_and_mntp(["debug=tiny"])
    assert mntp_tiny.name.startswith("tiny-llm2vec_mntp-") and mntp_tiny.name != f"tiny-{mntp.name}"


def test_keys_do_not_depend_on_where_the_cache_lives(tmp_path, monkeypatch):
    _, mntp, simcse = teacher_and_mntp([])
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path))
    _, moved_mntp, moved_simcse = teacher_and_mntp([])
    assert moved_simcse.parent == tmp_path / "stages"
    assert (moved_mntp.name, moved_simcse.name) == (mntp.name, simcse.name)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "stages.llm2vec_mntp.kind=llm2vec_mtnp",
            r"stages.llm2vec_mntp.kind: unknown stage kind 'llm2vec_mtnp'",
        ),
        (
            "+stages.llm2vec_mntp.stepz=3",
            r"unknown config key 'stages.llm2vec_mntp.stepz'. Did you mean 'steps'\?",
        ),
        ("~stages.llm2vec_teacher.label_use", r"stages.llm2vec_teacher \(llm2vec_simcse\) needs: label_use"),
        ("model.teacher.name_or_path=${stage:teachr}", r"no stage 'teachr' under 'stages'"),
        (
            "stages.llm2vec_mntp.model=${stage:llm2vec_teacher}",
            r"stages.llm2vec_mntp uses \$\{stage:llm2vec_teacher\}, which is not an earlier stage",
        ),
    ],
)
def test_bad_stage_configs_are_named(override, message):
    cfg = compose_config(["exp=llm2vec_gen_tiny", "debug=tiny", override])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_teacher_options_released_needs_its_adapters_and_minilm_is_the_supervised_one():
    released = compose_config(["exp=llm2vec_gen_tiny", "debug=tiny", "stages=llm2vec_released_teacher"])
    with pytest.raises(ConfigError, match=r"stages.llm2vec_teacher.mntp_adapter' has no value"):
        check_config(released)
    supervised = compose_config(["exp=llm2vec_gen_qwen3_0.6b", "stages=llm2vec_supervised_teacher"])
    assert OmegaConf.to_container(supervised.stages) == {}
    assert supervised.model.teacher.name_or_path == "all-minilm-l6-v2" and supervised.model.teacher.normalize
    assert supervised.meta.label_use.startswith(
        "labels through the teacher"
    )  # the report keeps the first phrase


@pytest.mark.parametrize(
    "experiment", ["llm2vec_gen_tiny", "llm2vec_gen_qwen3_0.6b", "llm2vec_gen_qwen2.5_1.5b"]
)
def test_llm2vec_gen_experiments_build_the_unsupervised_teacher_first(experiment):
    cfg = compose_config([f"exp={experiment}"])
    assert used_stages(cfg) == ["llm2vec_mntp", "llm2vec_teacher"]
    assert cfg.stages.llm2vec_mntp.model == cfg.model.frozen_lm.name_or_path  # the same backbone
    teacher = cfg.model.teacher
    assert teacher.attention == "bidirectional" and teacher.pooling == "mean" and teacher.normalize is False


def test_a_stage_no_key_refers_to_is_not_built():
    cfg = compose_config(["exp=rabtriever_tiny", "model.frozen_lm.name_or_path=smollm2-135m-instruct"])
    assert used_stages(cfg) == []
    assert used_stages(compose_config(["exp=rabtriever_tiny"])) == ["reranker_sft"]


@pytest.fixture
def counted_builds(monkeypatch, tmp_path):
    """A fresh cache, and the number of real builds per stage kind."""
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    counts: dict[str, int] = {}
    for kind, spec in list(stage_builders.KINDS.items()):

        def build(name, settings, out, context, _kind=kind, _build=spec.build):
            counts[_kind] = counts.get(_kind, 0) + 1
            return _build(name, settings, out, context)

        monkeypatch.setitem(stage_builders.KINDS, kind, spec._replace(build=build))
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, kinds",
    [
        ("llm2vec_gen_tiny", {"llm2vec_mntp": 1, "llm2vec_simcse": 1}),
        ("llm2vec_gen_qwen3_0.6b", {"llm2vec_mntp": 1, "llm2vec_simcse": 1}),
        ("rabtriever_tiny", {"reranker_sft": 1}),
        ("rabtriever_qwen2_7b", {"reranker_sft": 1}),
    ],
)
def test_pipeline_runs_its_stages_once_and_reuses_them(experiment, kinds, counted_builds, tmp_path):
    overrides = [f"exp={experiment}", "debug=tiny", "trainer.fast_dev_run=true", "data.max_eval_queries=4"]
    first = run_experiment(overrides, tmp_path / "first")
    assert counted_builds == kinds
    second = run_experiment(overrides, tmp_path / "second")
    assert counted_builds == kinds  # nothing built again
    assert [s["status"] for s in first["stages"]] == ["built"] * len(first["stages"])
    assert [s["status"] for s in second["stages"]] == ["reused"] * len(second["stages"])
    for built, reused in zip(first["stages"], second["stages"]):
        assert built["path"] == reused["path"] and built["key"] == reused["key"]
        assert reused["build_seconds"] == built["build_seconds"] > 0 and reused["metrics"]["steps"] >= 1
        marker = json.loads((Path(built["path"]) / "lsr_stage.json").read_text())
        assert marker["key"] == built["key"] and marker["label_use"] == built["label_use"]
    if experiment.startswith("rabtriever"):
        assert second["label_use"].startswith("stage reranker_sft: relevance labels")  # first: never cut off
        assert second["stages"][0]["path"] in json.dumps(second["start"])
    else:
        assert second["label_use"].startswith("none") and "stage " not in second["label_use"]


@pytest.mark.slow
def test_released_teacher_stage_merges_local_adapters(counted_builds, tmp_path, tiny_llama_path):
    from tests.test_llm2vec_teacher import tiny_adapter

    mntp = tiny_adapter(tiny_llama_path, tmp_path / "mntp", 1, ["q_proj", "v_proj"])
    simcse = tiny_adapter(tiny_llama_path, tmp_path / "simcse", 2, ["k_proj"])
    overrides = [
        "exp=llm2vec_gen_tiny",
        "debug=tiny",
        "trainer.fast_dev_run=true",
        "data.max_eval_queries=4",
        "stages=llm2vec_released_teacher",
        f"stages.llm2vec_teacher.mntp_adapter={mntp}",
        f"stages.llm2vec_teacher.simcse_adapter={simcse}",
    ]
    results = run_experiment(overrides, tmp_path / "run")
    assert counted_builds == {"llm2vec_released": 1}
    (stage,) = results["stages"]
    assert stage["metrics"]["base"] == tiny_llama_path and stage["metrics"]["simcse_adapter"] == simcse


@pytest.mark.slow
def test_concurrent_ranks_build_a_stage_once_and_load_the_same_folder(tmp_path):
    """As under ``srun``: two processes reach the stages together; one builds, the other waits and reuses."""
    script = (
        "import json, sys\n"
        "from experiments.cli import prepare_process\n"
        "from experiments.stage_runner import run_stages\n"
        "from tests.helpers import compose_config\n"
        "cfg = compose_config(['exp=rabtriever_tiny', 'debug=tiny', 'threads=1'])\n"
        "prepare_process(bool(cfg.offline), cfg.threads)\n"
        "(record,) = run_stages(cfg).records\n"
        "print(json.dumps({'status': record.status, 'path': record.path}))\n"
    )
    env = {**os.environ, "LSR_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    ranks = [
        subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [json.loads(rank.communicate(timeout=600)[0].strip().splitlines()[-1]) for rank in ranks]
    assert sorted(o["status"] for o in outputs) == ["built", "reused"]
    assert outputs[0]["path"] == outputs[1]["path"]


def test_evaluating_a_stage_output_uses_the_attention_it_was_built_with(tmp_path):
    from experiments.eval_models import stage_attention

    (tmp_path / "lsr_stage.json").write_text(json.dumps({"metrics": {"attention": "bidirectional"}}))
    assert stage_attention(tmp_path) == "bidirectional"
    assert stage_attention(tmp_path / "elsewhere") == "causal"
