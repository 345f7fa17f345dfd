"""The Hydra config: every experiment composes, bad names and keys fail with a helpful message."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from tests.helpers import compose_config, experiment_names


@pytest.mark.parametrize("experiment", experiment_names())
def test_every_experiment_composes_and_names_itself(experiment):
    cfg = compose_config([f"exp={experiment}"])
    assert cfg.name == experiment, "an experiment file must set name: <its file name>"
    OmegaConf.resolve(cfg)  # every interpolation resolves
    for key in ("method", "start", "candidates", "label_use"):
        assert cfg.meta[key] not in (None, "???"), f"exp/{experiment}.yaml must fill meta.{key}"
    assert cfg.model._target_.startswith("lightning_modules.")


def test_debug_tiny_swaps_models_and_data():
    cfg = compose_config(["exp=default", "debug=tiny"])
    assert cfg.tiny_models is True
    assert cfg.data.tiny is True
    assert cfg.trainer.max_steps == 2


def test_unknown_experiment_lists_the_choices():
    with pytest.raises(MissingConfigException) as err:
        compose_config(["exp=no_such_experiment"])
    message = str(err.value)
    assert "no_such_experiment" in message
    assert "default" in message and "contrastive_tiny_smollm" in message


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["exp=default", "model.temperatur=0.1"])
    assert "temperatur" in str(err.value)
