"""Run ``python -m experiments.train`` as a real subprocess (so it can be killed) and read what it wrote."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from lightning_modules.checkpoint_io import read_global_step

REPO = Path(__file__).resolve().parents[1]

# debug=tiny, a checkpoint after every step, the training loss logged every step, and nothing slow
# (no retrieval evaluation or export: these tests are about training state)
FAST_TINY = [
    "debug=tiny",
    "trainer.log_every_n_steps=1",
    "callbacks.resume_checkpoint.every_n_train_steps=1",
    "callbacks.retrieval_eval=null",
    "callbacks.model_checkpoint=null",
    "callbacks.export=null",
    "eval_before_training=false",
    "threads=1",
]


def train_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "experiments.train", *overrides]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra or {})
    return env


def run_training(
    overrides: list[str], env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(overrides),
        cwd=REPO,
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_training(overrides: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process by the caller's wait
    return subprocess.Popen(
        train_command(overrides), cwd=REPO, env=subprocess_env(env), stdout=handle, stderr=subprocess.STDOUT
    )


def wait_for(
    condition, process: subprocess.Popen, log: Path, timeout: float = 180, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(
                f"training exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def checkpoint_step(path: Path | None) -> int | None:
    """The checkpoint's global step, or None while it does not exist (it is always complete when it does)."""
    if path is None or not path.exists():
        return None
    return read_global_step(path)


def newest(root: Path, pattern: str) -> Path | None:
    """The first path under ``root`` matching ``pattern`` (None while there is none)."""
    return next(iter(root.glob(pattern)), None)


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{global step: train/loss}`` from the run's ``metrics.csv`` (each step exactly once)."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = [
            (int(float(r["step"])), float(r["train/loss"]))
            for r in csv.DictReader(handle)
            if r.get("train/loss")
        ]
    steps = [step for step, _ in rows]
    assert len(steps) == len(set(steps)), f"a step's loss was logged twice: {sorted(steps)}"
    return dict(rows)


def only_run_dir(output_root: Path, experiment: str = "default") -> Path:
    dirs = [p for p in (output_root / experiment).glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, f"expected one run directory under {output_root}, found {dirs}"
    return dirs[0]
