"""SIGTERM to a 2-rank DDP run (gloo, CPU) under SLURM auto-requeue: it exits promptly, with ``last.ckpt``.

Both ranks are started as ``srun`` starts them (one process per task with the ``SLURM_*`` variables, so
Lightning's ``SLURMEnvironment`` with auto-requeue is in charge, as in ``make slurm``). SIGTERM is sent the
way ``scontrol requeue`` / ``scancel`` send it (every task), or to one rank only. Lightning's own handler ran
``dist.broadcast`` inside the signal handler and hung both ranks until SLURM's ``KillWait`` SIGKILL;
``callbacks.resume.ResumeCheckpoint`` only flags the signal, the ranks agree at the next batch end (an
all-reduce of the flag), every rank saves ``last.ckpt`` at the same step and exits with 128 + SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.reliability_helpers import FAST_TINY, checkpoint_step, newest, start_training

PROMPT_EXIT_S = 180  # a hang never ends; exits took 8-40 s here at load average 10-14 (interpreter shutdown)
COMMAND = [
    "exp=default",
    *FAST_TINY,
    "trainer=ddp_cpu",
    "trainer.strategy=ddp_find_unused_parameters_true",  # debug=tiny resets the strategy to auto
    "trainer.max_steps=500",
    "callbacks.resume_checkpoint.every_n_train_steps=2",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def srun_env(rank: int, port: int) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": "5151",
        "SLURM_JOB_NAME": "lsr-train",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [(0, 1), (1,)], ids=["all-ranks", "rank-1-only"])
def test_sigterm_stops_every_rank_promptly_with_a_checkpoint(tmp_path: Path, signalled: tuple[int, ...]):
    port = free_port()
    logs = [tmp_path / f"rank{rank}.log" for rank in range(2)]
    ranks = [
        start_training([*COMMAND, f"output_root={tmp_path}"], logs[r], env=srun_env(r, port))
        for r in range(2)
    ]
    pattern = "default/*/5151/checkpoints/last.ckpt"
    try:
        deadline = time.monotonic() + 300
        while (checkpoint_step(newest(tmp_path, pattern)) or 0) < 2:
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            assert all(p.poll() is None for p in ranks), (
                logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
            )
            time.sleep(0.05)
        for rank in signalled:
            ranks[rank].send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for process in ranks:
            process.wait(timeout=PROMPT_EXIT_S)
        waited = time.monotonic() - sent
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = logs[0].read_text()
    assert [p.returncode for p in ranks] == [128 + signal.SIGTERM] * 2, log[-3000:]
    match = next(
        (line for line in log.splitlines() if line.startswith("interrupted (SIGTERM) after step ")), None
    )
    assert match, log[-3000:]
    stopped_at = int(match.split()[4].rstrip(":"))
    assert checkpoint_step(newest(tmp_path, pattern)) == stopped_at >= 2, (
        "last.ckpt holds the step it stopped at"
    )
    assert stopped_at < 500
    print(f"SIGTERM to ranks {signalled}: both exited {waited:.1f} s later, last.ckpt at step {stopped_at}")
