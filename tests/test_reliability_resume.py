"""Kill -9 and SLURM preemption during real training subprocesses; the same command resumes exactly.

Each scenario runs the contrastive default experiment with ``debug=tiny`` (tiny random BERT, the in-repo
fixture: 3 batches per epoch, so 8 steps cross two epoch boundaries and every resume lands mid-epoch or
on one), a checkpoint after every step and the loss logged every step. The reference is one
uninterrupted run with the same seed; resumed runs must reproduce its loss at every step.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.reliability_helpers import (
    FAST_TINY,
    REPO,
    checkpoint_step,
    newest,
    only_run_dir,
    run_training,
    start_training,
    step_losses,
    subprocess_env,
    train_command,
    wait_for,
)

STEPS = 8
COMMON = ["exp=default", *FAST_TINY, f"trainer.max_steps={STEPS}"]
FAKE_WANDB_KEY = "wandbkey-0123456789abcdef0123456789abcdef01234567"
FAKE_HF_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken0123456789"


def assert_same_losses(expected: dict[int, float], actual: dict[int, float]) -> None:
    assert sorted(actual) == sorted(expected), f"logged steps differ: {sorted(actual)} vs {sorted(expected)}"
    for step, value in expected.items():
        assert math.isclose(actual[step], value, rel_tol=1e-5, abs_tol=1e-6), (
            f"step {step}: {actual[step]} != {value}"
        )


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory) -> dict[int, float]:
    """Losses of one uninterrupted run (seed 42)."""
    root = tmp_path_factory.mktemp("reference")
    done = run_training([*COMMON, f"output_root={root}"])
    assert done.returncode == 0, done.stderr[-3000:]
    losses = step_losses(only_run_dir(root))
    assert len(losses) == STEPS
    return losses


def test_kill_9_mid_training_then_same_command_resumes_with_identical_losses(tmp_path, reference_losses):
    command = [*COMMON, f"output_root={tmp_path}"]
    log = tmp_path / "first_attempt.log"
    first = start_training(command, log)
    pattern = "default/*/local/checkpoints/last.ckpt"
    wait_for(lambda: (checkpoint_step(newest(tmp_path, pattern)) or 0) >= 4, first, log, what="step 4")
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    killed_at = checkpoint_step(newest(tmp_path, pattern))
    assert 4 <= killed_at < STEPS, "the kill must land before the end of training"

    second = run_training(command)  # the very same command
    assert second.returncode == 0, second.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_at_step"] == killed_at
    assert results["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert results["budget"]["steps"] == STEPS
    assert f"(step {killed_at})" in second.stderr
    # same losses as the uninterrupted run at every step, before and after the kill: data order, sampler
    # position (mid-epoch), optimizer, scheduler and dropout RNG were all restored
    assert_same_losses(reference_losses, step_losses(run_dir))
    # the first attempt's CSV metrics were not deleted by the resumed logger
    archived = run_dir / "metrics.attempt-1.csv"
    assert archived.exists() and "train/loss" in archived.read_text()


def test_ctrl_c_saves_after_the_batch_and_the_printed_command_resumes_with_identical_losses(
    tmp_path, reference_losses
):
    command = [*COMMON, f"output_root={tmp_path}"]
    log = tmp_path / "first_attempt.log"
    first = start_training(command, log)
    pattern = "default/*/local/checkpoints/last.ckpt"
    wait_for(lambda: (checkpoint_step(newest(tmp_path, pattern)) or 0) >= 3, first, log, what="step 3")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 128 + signal.SIGINT, log.read_text()[-3000:]
    stopped_at = checkpoint_step(newest(tmp_path, pattern))
    assert 3 <= stopped_at < STEPS, "the interrupt must land before the end of training"
    text = log.read_text()
    assert f"interrupted (SIGINT) after step {stopped_at}: " in text
    assert "Traceback" not in text
    printed = text.split("Resume with the same command:\n", 1)[1].splitlines()[0].strip()
    assert printed == f"cd {shlex.quote(str(REPO))} && {shlex.join(train_command(command))}"

    second = subprocess.run(
        printed, shell=True, env=subprocess_env(), capture_output=True, text=True, timeout=240
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"(step {stopped_at}); the data order continues where it stopped" in second.stderr
    assert "not resumable" not in second.stderr  # Lightning's misleading warning is replaced
    assert_same_losses(reference_losses, step_losses(only_run_dir(tmp_path)))


def slurm_env(tmp_path: Path, job_id: str, restart_count: int) -> dict[str, str]:
    """Fake SLURM variables, a stub ``scontrol`` first on PATH, and fake credentials in the environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "scontrol"
    # like SLURM, `scontrol requeue` ends the running job (here: at once, with SIGKILL)
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol_calls.txt\nkill -9 $PPID\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "lsr-train",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_RESTART_COUNT": str(restart_count),
        "WANDB_API_KEY": FAKE_WANDB_KEY,
        "HF_TOKEN": FAKE_HF_TOKEN,
        "WANDB_MODE": "offline",
    }


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory) -> dict:
    """A run preempted by SIGUSR1 after step 3, requeued under the same job id, with W&B (offline)."""
    root = tmp_path_factory.mktemp("slurm")
    command = [*COMMON, f"output_root={root}", "logger=wandb"]
    log = root / "first_attempt.log"
    first = start_training(command, log, env=slurm_env(root, "4242", 0))
    pattern = "default/*/4242/checkpoints/last.ckpt"
    wait_for(lambda: (checkpoint_step(newest(root, pattern)) or 0) >= 3, first, log, what="step 3")
    first.send_signal(signal.SIGUSR1)
    first.wait(timeout=120)
    run_dir = only_run_dir(root)
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    hpc_step = checkpoint_step(hpc[0]) if hpc else None
    second = run_training(command, env=slurm_env(root, "4242", 1))
    return {
        "root": root,
        "run_dir": run_dir,
        "first_rc": first.returncode,
        "first_log": log.read_text(),
        "hpc": hpc,
        "hpc_step": hpc_step,
        "second": second,
        "scontrol": (root / "scontrol_calls.txt").read_text()
        if (root / "scontrol_calls.txt").exists()
        else "",
    }


def test_sigusr1_under_slurm_writes_hpc_checkpoint_and_requeued_run_resumes_from_it(
    preempted_run, reference_losses
):
    assert preempted_run["first_rc"] == -signal.SIGKILL, preempted_run["first_log"][-3000:]
    assert preempted_run["scontrol"].strip() == "requeue 4242"
    assert [p.name for p in preempted_run["hpc"]] == ["hpc_ckpt_1.ckpt"], preempted_run["first_log"][-3000:]
    hpc_step = preempted_run["hpc_step"]
    assert 3 <= hpc_step < STEPS
    second = preempted_run["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    run_dir = preempted_run["run_dir"]
    assert run_dir.name == "4242", "a requeued job must land in the same run directory"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"].endswith("hpc_ckpt_1.ckpt")
    assert results["resumed_at_step"] == hpc_step
    assert results["budget"]["steps"] == STEPS
    # the preemption checkpoint is taken between batches, so the requeued run continues exactly
    assert_same_losses(reference_losses, step_losses(run_dir))
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert wandb_runs and {p.name.split("-", 3)[-1] for p in wandb_runs} == {
        f"default-{run_dir.parent.name}-4242"
    }, "both attempts log to the same W&B run id"


def test_no_credential_from_the_environment_is_written_to_the_run_directory(preempted_run):
    leaks = []
    for path in preempted_run["run_dir"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (FAKE_WANDB_KEY, FAKE_HF_TOKEN, FAKE_WANDB_KEY[8:30]):
                if secret.encode() in data:
                    leaks.append(f"{path} contains {secret[:12]}...")
    assert not leaks, leaks
    assert any(p.suffix == ".ckpt" for p in preempted_run["run_dir"].rglob("*")), (
        "the scan must cover checkpoints"
    )
