"""Run directories under SLURM: every srun rank creating the same directory at the same moment, and a new
job continuing an earlier job's run with ``resume=<run dir>`` (the directory is otherwise keyed by the
SLURM job id, so a manual resubmission would start from scratch)."""

from __future__ import annotations

import json
import multiprocessing
import signal
from pathlib import Path

import pytest
import yaml

from experiments.config_check import ConfigError
from experiments.run_dir import ConfigMismatchError, check_or_store_config, run_directory
from tests.reliability_helpers import (
    FAST_TINY,
    checkpoint_step,
    newest,
    only_run_dir,
    run_training,
    start_training,
    step_losses,
    wait_for,
)

RANKS = 8
ROUNDS = 20  # before the fix, a rank died of FileNotFoundError in 11 of 30 rounds
CONFIG = {"model": {"temperature": 0.05, "notes": "x" * 4000}, "seed": 1}
OTHER = {**CONFIG, "seed": 2}


def store(run_dir: str, config: dict, barrier, outcomes) -> None:
    barrier.wait()  # every rank reaches check_or_store_config at once, as srun starts them
    try:
        check_or_store_config(Path(run_dir), config)
        outcomes.put((config["seed"], "ok"))
    except ConfigMismatchError:
        outcomes.put((config["seed"], "mismatch"))
    except Exception as err:  # noqa: BLE001 - any other failure is the race this test is about
        outcomes.put((config["seed"], repr(err)))


def start_ranks(run_dir: Path, configs: list[dict]) -> list[tuple[int, str]]:
    context = multiprocessing.get_context("fork")
    barrier, outcomes = context.Barrier(len(configs)), context.Queue()
    ranks = [context.Process(target=store, args=(str(run_dir), c, barrier, outcomes)) for c in configs]
    for rank in ranks:
        rank.start()
    results = [outcomes.get(timeout=60) for _ in ranks]
    for rank in ranks:
        rank.join(timeout=60)
    return results


def test_ranks_creating_the_same_run_directory_at_once_all_start(tmp_path):
    for round_ in range(ROUNDS):
        run_dir = tmp_path / str(round_) / "default" / "abc" / "4242"
        outcomes = start_ranks(run_dir, [CONFIG] * RANKS)
        assert [o for _, o in outcomes] == ["ok"] * RANKS, f"round {round_}: {outcomes}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text()) == CONFIG
        assert [p.name for p in run_dir.iterdir()] == ["config.yaml"], "no temporary file is left behind"


def test_a_concurrent_rank_with_another_config_is_refused_whoever_stores_first(tmp_path):
    for round_ in range(10):
        run_dir = tmp_path / str(round_)
        outcomes = start_ranks(run_dir, [OTHER] + [CONFIG] * (RANKS - 1))
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert stored in (CONFIG, OTHER)
        for seed, outcome in outcomes:
            assert outcome == ("ok" if seed == stored["seed"] else "mismatch"), outcomes


def test_resume_names_an_earlier_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "200")
    earlier = tmp_path / "default" / "abc123" / "100"
    check_or_store_config(earlier, {"seed": 1, "resume": True, "output_root": "runs"})
    assert run_directory("runs", "default", [f"resume={earlier}", "seed=1"]) == earlier
    for flag in ("resume=false", "resume=true"):  # a flag, not a path: this job's own directory
        assert run_directory("runs", "default", [flag]).name == "200"
    # where a run starts from is not part of what it computes: the stored config still matches
    check_or_store_config(earlier, {"seed": 1, "resume": str(earlier), "output_root": "elsewhere"})
    with pytest.raises(ConfigError, match=r"resume=.*nowhere: .* is not a run directory \(no config.yaml"):
        run_directory("runs", "default", [f"resume={tmp_path / 'nowhere'}"])


STEPS = 8
COMMON = ["exp=default", *FAST_TINY, f"trainer.max_steps={STEPS}"]


def test_a_new_job_resumes_an_earlier_jobs_run_at_its_last_checkpoint(tmp_path):
    command = [*COMMON, f"output_root={tmp_path}"]
    log = tmp_path / "job_100.log"
    first = start_training(command, log, env={"SLURM_JOB_ID": "100"})
    pattern = "default/*/100/checkpoints/last.ckpt"
    wait_for(lambda: (checkpoint_step(newest(tmp_path, pattern)) or 0) >= 3, first, log, what="step 3")
    first.send_signal(signal.SIGKILL)  # a node failure: no requeue, the job is gone
    first.wait(timeout=60)
    earlier = only_run_dir(tmp_path)
    stopped_at = checkpoint_step(earlier / "checkpoints" / "last.ckpt")
    assert 3 <= stopped_at < STEPS

    second = run_training([*command, f"resume={earlier}"], env={"SLURM_JOB_ID": "200"})
    assert second.returncode == 0, second.stderr[-3000:]
    assert only_run_dir(tmp_path) == earlier, "the new job writes into the earlier run, not a new one"
    results = json.loads((earlier / "results.json").read_text())
    assert results["run_dir"] == str(earlier)
    assert results["resumed_at_step"] == stopped_at and results["budget"]["steps"] == STEPS
    assert sorted(step_losses(earlier)) == list(range(STEPS)), "every step logged exactly once"


def test_resume_pointing_at_no_run_is_one_error_line(tmp_path):
    done = run_training([*COMMON, f"output_root={tmp_path}", f"resume={tmp_path / 'gone'}"])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: resume={tmp_path / 'gone'}: ") and "no config.yaml" in lines[-1]
    assert not (tmp_path / "default").exists(), "nothing is created for a run that cannot start"
