"""The rendered ``make slurm`` script on a real SLURM cluster: SIGUSR1, HPC checkpoint, requeue, resume.

Needs ``sbatch`` and a running cluster; ``.ci/slurm_cluster.sh start`` (run by ``.ci/run``, and by this
module's fixture when run as root) installs Debian's slurm-wlm + munge and starts a single-node cluster.
Two jobs are submitted from the same script, exactly what ``make slurm EXP=default NODES=1 GPUS=2
TRAINER=ddp_cpu ARGS=...`` submits: 2 CPU tasks under srun, DDP over gloo, tiny models. The first job gets
SIGUSR1 on both tasks, as SLURM sends it 90 s before the time limit (``scancel --signal=USR1``); the second
runs uninterrupted and is the reference. The first must write Lightning's HPC checkpoint, requeue itself
under the same job id, and (once SLURM restarts it) resume at the step where it stopped, logging the
reference's loss at every step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from experiments import slurm
from tests.reliability_helpers import REPO, checkpoint_step, step_losses

STEPS = 16
SIGNAL_AFTER_STEP = 3
ARGS = [
    "debug=tiny",
    "trainer.strategy=ddp_find_unused_parameters_true",  # debug=tiny resets the strategy to auto
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.resume_checkpoint.every_n_train_steps=1",
    "callbacks.retrieval_eval=null",
    "callbacks.model_checkpoint=null",
    "callbacks.export=null",
    "eval_before_training=false",
]
REQUIRED = os.environ.get("LSR_REQUIRE_SLURM") == "1"  # set by .ci/run: CI never skips this test

pytestmark = pytest.mark.skipif(
    shutil.which("sbatch") is None and not REQUIRED,
    reason="sbatch not found: start a single-node SLURM cluster with `.ci/slurm_cluster.sh start` (as root)",
)


@pytest.fixture(scope="module")
def cluster() -> None:
    if os.geteuid() == 0 or shutil.which("sbatch") is None:  # idempotent; under a second when already up
        subprocess.run([str(REPO / ".ci" / "slurm_cluster.sh"), "start"], check=True, timeout=900)
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
    assert state.returncode == 0 and re.search(r"idle|mixed|allocated", state.stdout), (
        f"no usable SLURM node (sinfo: {state.stdout.strip() or state.stderr.strip()}); "
        "run .ci/slurm_cluster.sh start as root"
    )


def submit(output_root: Path) -> str:
    """``make slurm`` for a 2-task CPU job: render slurm/train.sbatch and sbatch it; returns the job id."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(slurm, "GENERATED_DIR", output_root / "generated")  # not the checkout's slurm/generated
        slurm.main(
            [
                "train",
                "default",
                "--nodes=1",
                "--gpus=2",
                "--trainer=ddp_cpu",
                "--cpus-per-task=1",
                "--time=00:20:00",
                "--logger=csv",
                f"--output-root={output_root}",
                "--",
                *ARGS,
            ]
        )
    match = re.search(r"Submitted batch job (\d+)", printed.getvalue())
    assert match, printed.getvalue()
    return match.group(1)


def job_state(job: str) -> str:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\S+)", shown)
    return match.group(1) if match else "UNKNOWN"


def job_log(output_root: Path, job: str) -> str:
    logs = list((output_root / "slurm-logs").glob(f"*-{job}.out"))
    return logs[0].read_text(errors="replace") if logs else "(no log yet)"


def wait_until(condition, what: str, output_root: Path, job: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        state = job_state(job)
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
            raise AssertionError(f"job {job} is {state} before {what}:\n{job_log(output_root, job)[-4000:]}")
        time.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what} (job {job}: {job_state(job)}):\n{job_log(output_root, job)[-4000:]}"
    )


def run_dir_of(output_root: Path, job: str) -> Path | None:
    return next((output_root / "default").glob(f"*/{job}"), None)


def newest_step(output_root: Path, job: str) -> int:
    run_dir = run_dir_of(output_root, job)
    return (checkpoint_step(run_dir / "checkpoints" / "last.ckpt") or 0) if run_dir else 0


def checkpoints_left(run_dir: Path) -> dict[str, int]:
    paths = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    return {p.name: checkpoint_step(p) for p in paths if p.exists()}


@pytest.fixture(scope="module")
def requeued(cluster, tmp_path_factory) -> dict:
    """Submit the job to preempt and the reference job; signal the first; let SLURM requeue and rerun it."""
    root = tmp_path_factory.mktemp("slurm-cluster")
    job = submit(root)
    reference = submit(root)  # queued behind the first job (the node has no CPU left); runs while it waits
    started = time.monotonic()
    try:
        wait_until(
            lambda: newest_step(root, job) >= SIGNAL_AFTER_STEP, f"step {SIGNAL_AFTER_STEP}", root, job
        )
        signalled_at = newest_step(root, job)
        # what SLURM does 90 s before the time limit (--signal=SIGUSR1@90): SIGUSR1 to every task
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        wait_until(lambda: job_state(job) == "PENDING", "the requeue", root, job)
        run_dir = run_dir_of(root, job)
        left = checkpoints_left(run_dir)  # before the rerun replaces them
        # a requeued job waits ~2 minutes (BeginTime) before SLURM restarts it; skip the wait
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        for each in (reference, job):
            wait_until(
                lambda each=each: job_state(each) == "COMPLETED", f"job {each} to complete", root, each
            )
    finally:
        subprocess.run(["scancel", job, reference], capture_output=True, timeout=30)
    return {
        "root": root,
        "job": job,
        "reference": reference,
        "signalled_at": signalled_at,
        "left": left,
        "run_dir": run_dir,
        "log": job_log(root, job),
        "seconds": time.monotonic() - started,
    }


def test_sigusr1_writes_the_hpc_checkpoint_and_requeues_the_job(requeued):
    left, log = requeued["left"], requeued["log"]
    assert "hpc_ckpt_1.ckpt" in left, f"no HPC checkpoint; the job left {left}:\n{log[-4000:]}"
    assert requeued["signalled_at"] <= left["hpc_ckpt_1.ckpt"] < STEPS
    assert f"requeing job {requeued['job']}" in log and "DUE TO JOB REQUEUE" in log
    assert re.search(rf"^job {requeued['job']} restart 1 on ", log, re.M), log[-4000:]  # same id, 2nd run


def test_requeued_job_resumes_in_its_run_directory_at_the_step_where_it_stopped(requeued):
    run_dir, left = requeued["run_dir"], requeued["left"]
    assert run_dir.name == requeued["job"], "the requeued job keeps its job id, hence its run directory"
    results = json.loads((run_dir / "results.json").read_text())
    stopped_at = max(left.values())
    newest = max(left, key=lambda name: (left[name], name.startswith("hpc_")))  # ties: the HPC checkpoint
    assert results["resumed_at_step"] == stopped_at
    assert Path(results["resumed_from"]).name == newest
    assert results["budget"]["steps"] == STEPS
    resumed, reference = resumed_and_reference_losses(requeued)
    assert sorted(resumed) == sorted(reference) == list(range(STEPS)), "every step logged exactly once"
    for step in range(stopped_at):  # the first attempt's rows, kept: two DDP runs agree up to the signal
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), f"step {step}"
    print(f"SLURM requeue scenario: {requeued['seconds']:.0f} s wall")


def test_losses_after_the_resume_equal_those_of_an_uninterrupted_run(requeued):
    resumed, reference = resumed_and_reference_losses(requeued)
    for step in range(max(requeued["left"].values()), STEPS):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), f"step {step}"


def resumed_and_reference_losses(requeued: dict) -> tuple[dict[int, float], dict[int, float]]:
    reference_dir = run_dir_of(requeued["root"], requeued["reference"])
    return step_losses(requeued["run_dir"]), step_losses(reference_dir)
