"""Module settings are frozen dataclasses: a wrong choice or an unknown key is one message naming the config
key, checked before any model loads; signature-based config checks still see every valid key."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.config_check import accepted_keys
from lightning_modules.dream.module import DreamModule
from lightning_modules.dream.settings import DreamSettings
from lightning_modules.llm2vec_gen.module import LLM2VecGenModule
from lightning_modules.llm2vec_gen.settings import LLM2VecGenSettings
from lightning_modules.llm_embedder.module import LLMEmbedderModule
from lightning_modules.llm_embedder.settings import LLMEmbedderSettings
from lightning_modules.rabtriever.module import RabtrieverModule
from lightning_modules.rabtriever.settings import RabtrieverSettings
from lightning_modules.settings import SettingsError

LM = {"name_or_path": "tiny-llama"}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: DreamModule(frozen_lm=LM, candidates="x"),
            "model.candidates must be one of dataset, in_batch, mined; got 'x'",
        ),
        (
            lambda: DreamModule(frozen_lm=LM, heads={"selection": "all"}),
            "model.heads.selection must be one of middle_third, explicit, intervention; got 'all'",
        ),
        (
            lambda: DreamModule(frozen_lm=LM, candidats="mined"),
            "unknown config key 'model.candidats'. Did you mean 'candidates'?",
        ),
        (
            lambda: DreamModule(frozen_lm=LM, heads={"top": 3}),
            "unknown config key 'model.heads.top'. Did you mean 'top_n'?",
        ),
        (
            lambda: LLM2VecGenModule(
                frozen_lm=LM, teacher={"name_or_path": "tiny-bert"}, reconstruction_init="zeros"
            ),
            "model.reconstruction_init must be one of identity, random; got 'zeros'",
        ),
        (
            lambda: LLM2VecGenModule(
                frozen_lm=LM, teacher={"name_or_path": "tiny-bert"}, generation={"max_tokens": 3}
            ),
            "unknown config key 'model.generation.max_tokens'. Did you mean 'max_new_tokens'?",
        ),
        (
            lambda: LLMEmbedderModule(embedder={"name_or_path": "tiny-bert"}, teacher={"reward": "bleu"}),
            "model.teacher.reward must be one of nll, rank_aware; got 'bleu'",
        ),
        (
            lambda: LLMEmbedderModule(embedder={"name_or_path": "tiny-bert"}, graded_order="random"),
            "model.graded_order must be one of teacher, positive_first; got 'random'",
        ),
        (
            lambda: RabtrieverModule(frozen_lm=LM, kl_over="all"),
            "model.kl_over must be one of relevance, vocabulary",
        ),
        (
            lambda: RabtrieverModule(frozen_lm=LM, prompt={"chat": True, "relevance_token": ["A", "B"]}),
            "unknown config key 'model.prompt.relevance_token'. Did you mean 'relevance_tokens'?",
        ),
    ],
)
def test_a_wrong_setting_names_its_key_before_any_model_loads(build, message, monkeypatch):
    loaded = []
    monkeypatch.setattr("lightning_modules.base.FrozenCausalLM", lambda **kw: loaded.append(kw))
    monkeypatch.setattr("lightning_modules.base.Embedder", lambda **kw: loaded.append(kw))
    with pytest.raises(SettingsError) as error:
        build()
    assert str(error.value).startswith(message)
    assert not loaded, "settings are checked before the models load"


def test_settings_are_frozen_and_keep_their_defaults_in_one_place():
    settings = DreamSettings()
    assert settings.candidates == "dataset" and settings.heads.selection == "middle_third"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.candidates = "mined"  # type: ignore[misc]
    assert DreamSettings(heads={"selection": "explicit", "layers": {0: [1]}}).heads.layers == {0: [1]}


@pytest.mark.parametrize(
    ("module", "settings"),
    [
        (DreamModule, DreamSettings),
        (LLM2VecGenModule, LLM2VecGenSettings),
        (LLMEmbedderModule, LLMEmbedderSettings),
        (RabtrieverModule, RabtrieverSettings),
    ],
)
def test_config_checks_still_see_every_setting_and_base_argument(module, settings):
    keys = accepted_keys(module)
    assert {f.name for f in dataclasses.fields(settings)} <= keys
    assert {"optimizer", "embedder", "frozen_lm", "eval_precision"} <= keys
    assert "no_such_key" not in keys


def test_a_wrong_setting_in_a_run_is_one_error_line_exit_2_and_no_run_folder(tmp_path, capsys, monkeypatch):
    from experiments.train import main

    monkeypatch.delenv("LSR_DEBUG", raising=False)
    arguments = ["exp=dream_tiny", "debug=tiny", "model.candidates=bogus", f"output_root={tmp_path}"]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: model.candidates must be one of dataset, in_batch, mined; got 'bogus'"], err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir()), "nothing written for a run that never started"
