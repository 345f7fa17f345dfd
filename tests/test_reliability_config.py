"""Config mistakes are refused before anything runs, naming the key and the valid choices."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from experiments.config_check import ConfigError, check_config, compose_checked, model_problem
from experiments.run_dir import check_no_secrets
from tests.helpers import experiment_names
from tests.reliability_helpers import REPO, subprocess_env


def config_error(overrides: list[str], edit=None) -> str:
    with pytest.raises(ConfigError) as err:
        cfg = compose_checked(overrides)
        if edit is not None:
            edit(cfg)
        check_config(cfg)
    return str(err.value)


def test_every_experiment_passes_the_checks():
    for experiment in experiment_names():
        check_config(compose_checked([f"exp={experiment}", "debug=tiny"]))


def test_unknown_experiment_lists_the_experiments():
    message = config_error(["exp=defualt"])
    assert message.startswith(
        "unknown experiment 'defualt' (no experiments/exp/defualt.yaml). Did you mean 'default'?"
    )
    assert "Available: " in message and "contrastive_tiny_smollm" in message


def test_typo_on_the_command_line_lists_valid_keys_at_that_level():
    message = config_error(["exp=default", "model.temprature=0.1"])
    assert message.startswith("unknown config key 'model.temprature'. Did you mean 'temperature'?")
    assert "Valid keys under 'model': " in message and "optimizer" in message and "embedder" in message


def test_typo_in_an_experiment_file_is_caught_after_composition():
    # an exp/*.yaml file may add keys freely; what it adds is checked against the constructor it feeds
    message = config_error(
        ["exp=default"], lambda cfg: OmegaConf.update(cfg, "model.embedder.poolng", "last", force_add=True)
    )
    assert message.startswith("unknown config key 'model.embedder.poolng'. Did you mean 'pooling'?")
    assert "Valid keys under 'model.embedder': " in message and "max_length" in message
    message = config_error(
        ["exp=default"], lambda cfg: OmegaConf.update(cfg, "trainer.max_step", 3, force_add=True)
    )
    assert message.startswith("unknown config key 'trainer.max_step'. Did you mean 'max_steps'?")
    message = config_error(["exp=default", "+sed=3"])
    assert (
        message.startswith("unknown config key 'sed'. Did you mean 'seed'?")
        and "Valid keys under '<root>'" in message
    )
    message = config_error(["exp=default", "+model.optimizer.learning_rate=1e-3"])
    assert message.startswith("unknown config key 'model.optimizer.learning_rate'") and "lr" in message


def test_unknown_section_suggests_the_closest():
    assert config_error(["exp=default", "modle.temperature=1"]).startswith(
        "unknown config key 'modle'. Did you mean 'model'?"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_2"])
def test_sharded_strategy_on_cpu_is_refused(strategy):
    message = config_error(["exp=default", f"trainer.strategy={strategy}"])
    assert message.startswith(f"trainer.strategy={strategy} needs CUDA GPUs")
    assert "trainer=ddp_cpu" in message, "the message names the fix"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_gpu_accelerator_and_fp16_without_gpu_are_refused():
    message = config_error(["exp=default", "trainer.accelerator=gpu"])
    assert message.startswith("trainer.accelerator=gpu but this machine has no CUDA GPU")
    message = config_error(["exp=default", "trainer.precision=16-mixed"])
    assert message.startswith("trainer.precision=16-mixed (float16 mixed precision) needs a GPU")


def test_missing_model_files_are_named(tmp_path):
    missing = tmp_path / "no-such-model"
    message = config_error(["exp=default", f"model.embedder.name_or_path={missing}"])
    assert message == f"model.embedder.name_or_path='{missing}': model folder not found"
    folder = tmp_path / "half-copied"
    folder.mkdir()
    assert model_problem(str(folder)) == "the folder has no config.json (not a Hugging Face model folder)"
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert model_problem(str(folder)).startswith("the folder has no weights file")
    (folder / "model.safetensors").write_bytes(b"")
    assert model_problem(str(folder)) is None
    message = config_error(["exp=default", "model.embedder.name_or_path=some-org/not-downloaded-model"])
    assert "not in the Hugging Face cache; hub downloads are off" in message


def test_required_data_path_is_asked_for():
    assert config_error(["exp=default", "data=beir_local"]).startswith(
        "data.path is not set: point it at a BEIR folder"
    )


def test_credentials_never_go_into_a_config(monkeypatch):
    with pytest.raises(ConfigError, match="config key 'logger.wandb.api_key' holds a credential"):
        check_no_secrets({"logger": {"wandb": {"api_key": "abcdef123456"}}})
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123456")
    with pytest.raises(
        ConfigError, match=r"config key 'model.embedder.name_or_path' contains the value of \$HF_TOKEN"
    ):
        check_no_secrets(
            {"model": {"embedder": {"name_or_path": "https://user:hf_secretvalue123456@host/model"}}}
        )
    check_no_secrets(
        {"model": {"max_new_tokens": 500, "num_tokens": 10, "tokenizer": "x"}}
    )  # not credentials


def trust_remote_code_flags(node, where: str = "") -> list[tuple[str, object]]:
    """Every ``trust_remote_code`` key in a config tree, with its value."""
    flags = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "trust_remote_code":
                flags.append((where + key, value))
            flags += trust_remote_code_flags(value, f"{where}{key}.")
    return flags


def test_trust_remote_code_is_off_in_every_experiment():
    for experiment in experiment_names():
        flags = trust_remote_code_flags(
            OmegaConf.to_container(compose_checked([f"exp={experiment}"]), resolve=True)
        )
        assert all(value is False for _, value in flags), (experiment, flags)


def test_trust_remote_code_off_never_runs_a_model_folders_code(tmp_path):
    from lightning_modules.models.embedder import Embedder

    folder = tmp_path / "remote-code-model"
    folder.mkdir()
    sentinel = tmp_path / "code-was-executed"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "lsr-remote-code-test",
                "auto_map": {
                    "AutoConfig": "configuration_x.XConfig",
                    "AutoModel": "modeling_x.XModel",
                    "AutoTokenizer": ["tokenization_x.XTokenizer", None],
                },
            }
        )
    )
    payload = f"open({str(sentinel)!r}, 'w').write('ran')\n"
    for module in ("configuration_x.py", "modeling_x.py", "tokenization_x.py"):
        (folder / module).write_text(payload)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}})
    )
    with pytest.raises(Exception, match="trust_remote_code"):
        Embedder(str(folder))
    assert not sentinel.exists(), "code shipped with a model folder ran although trust_remote_code is off"


def test_command_line_prints_one_clear_error_and_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", "exp=default", "model.temprature=0.1"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: unknown config key 'model.temprature'. Did you mean 'temperature'?")
    )
    assert "Traceback" not in done.stderr


def test_entry_point_reports_an_unknown_experiment(monkeypatch, capsys):
    from experiments.train import main

    monkeypatch.setattr(sys, "argv", ["experiments.train", "exp=no_such_experiment"])
    assert main() == 2
    assert capsys.readouterr().err.startswith(
        "error: unknown experiment 'no_such_experiment' (no experiments/exp/"
    )
