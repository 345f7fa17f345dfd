import pytest

from experiments.run_dir import ConfigMismatchError, check_or_store_config, run_directory


def test_run_directory_is_deterministic_and_override_specific(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    a = run_directory("runs", "exp", ["model.temperature=0.1", "seed=1"])
    assert a == run_directory("runs", "exp", ["seed=1", "model.temperature=0.1"])  # order-free
    assert a != run_directory("runs", "exp", ["seed=2", "model.temperature=0.1"])
    assert a.name == "local"
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert run_directory("runs", "exp", ["seed=1", "model.temperature=0.1"]).name == "1234"


def test_resuming_with_a_different_config_is_refused(tmp_path):
    check_or_store_config(tmp_path, {"model": {"temperature": 0.05}, "seed": 1})
    check_or_store_config(tmp_path, {"model": {"temperature": 0.05}, "seed": 1})  # same: fine
    with pytest.raises(ConfigMismatchError) as err:
        check_or_store_config(tmp_path, {"model": {"temperature": 0.1}, "seed": 1})
    assert "model.temperature" in str(err.value) and "0.05" in str(err.value)
