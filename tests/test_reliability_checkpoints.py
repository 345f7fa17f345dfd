"""Checkpoint files: a kill while saving never corrupts ``last.ckpt``; loading never unpickles code; resume
picks the newest readable checkpoint; the data order and CSV metrics continue where they stopped."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from callbacks.csv_logger import ResumableCSVLogger
from datamodules.retrieval import EpochAwareSampler
from experiments.config_check import ConfigError
from experiments.run_prepare import resume_checkpoint
from lightning_modules.checkpoint_io import AtomicCheckpointIO, read_global_step

REPO = Path(__file__).resolve().parents[1]

# a checkpoint-sized object whose pickling kills the process half-way through the file
KILL_WHILE_SAVING = """
    import os, signal, sys, torch
    from pathlib import Path
    from lightning_modules.checkpoint_io import AtomicCheckpointIO

    class KillWhilePickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)

    path = Path(sys.argv[1])
    checkpoint = {{"global_step": 7, "state_dict": {{"w": torch.zeros(256, 256)}}, "z": KillWhilePickled()}}
    if sys.argv[2] == "naive":
        torch.save(checkpoint, path)             # what a plain torch.save onto the target does
    elif sys.argv[2] == "atomic":
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    else:                                        # killed after writing, just before the rename
        os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)
        del checkpoint["z"]
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
"""


def save_and_get_killed(path: Path, mode: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_WHILE_SAVING).format(), str(path), mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr


def good_checkpoint(path: Path, step: int) -> None:
    AtomicCheckpointIO().save_checkpoint(
        {"global_step": step, "state_dict": {"w": torch.full((4,), float(step))}}, path
    )


@pytest.mark.parametrize("mode", ["atomic", "atomic_before_rename"])
def test_kill_while_saving_never_leaves_a_corrupt_last_ckpt(tmp_path, mode):
    path = tmp_path / "checkpoints" / "last.ckpt"
    good_checkpoint(path, 5)
    save_and_get_killed(path, mode)
    checkpoint = AtomicCheckpointIO().load_checkpoint(path)
    assert checkpoint["global_step"] == 5 and torch.equal(
        checkpoint["state_dict"]["w"], torch.full((4,), 5.0)
    )
    good_checkpoint(path, 6)  # the next save succeeds and cleans up the killed writer's temporary file
    assert read_global_step(path) == 6
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_the_same_kill_corrupts_a_plain_torch_save(tmp_path):
    """Control: the injected fault is real (without the temp file + rename, last.ckpt is destroyed)."""
    path = tmp_path / "last.ckpt"
    good_checkpoint(path, 5)
    save_and_get_killed(path, "naive")
    with pytest.raises(Exception):  # noqa: B017 - torch raises RuntimeError/EOFError/UnpicklingError by damage
        torch.load(path, weights_only=True)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "tampered.ckpt"
    torch.save({"global_step": 1, "state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_resume_picks_the_newest_readable_checkpoint(tmp_path, capsys):
    cfg = OmegaConf.create({"resume": True})
    assert resume_checkpoint(tmp_path, cfg) is None
    good_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 9)
    good_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 4)
    assert resume_checkpoint(tmp_path, cfg) == (str(tmp_path / "checkpoints" / "last.ckpt"), 9)
    good_checkpoint(tmp_path / "hpc_ckpt_2.ckpt", 9)
    assert resume_checkpoint(tmp_path, cfg) == (str(tmp_path / "hpc_ckpt_2.ckpt"), 9), (
        "a tie goes to the preemption save"
    )
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert resume_checkpoint(tmp_path, cfg) == (str(tmp_path / "checkpoints" / "last.ckpt"), 9)
    assert "skipping unreadable checkpoint" in capsys.readouterr().err
    for path in (tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"):
        path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="every checkpoint in the run directory is unreadable"):
        resume_checkpoint(tmp_path, cfg)
    assert resume_checkpoint(tmp_path, OmegaConf.create({"resume": False})) is None


def test_sampler_resumes_mid_epoch_in_the_same_order():
    uninterrupted = EpochAwareSampler(12, seed=3)
    uninterrupted.set_epoch(2)
    order = list(uninterrupted)
    resumed = EpochAwareSampler(12, seed=3)
    resumed.resume_at(2, 8)
    assert list(resumed) == order[8:]
    resumed.set_epoch(3)
    uninterrupted.set_epoch(3)
    assert list(resumed) == list(uninterrupted), "later epochs are unaffected"
    with pytest.raises(ValueError, match="cannot resume 13 samples into an epoch of 12"):
        resumed.resume_at(0, 13)


def test_csv_metrics_of_an_earlier_attempt_are_kept(tmp_path):
    first = ResumableCSVLogger(tmp_path)
    for step in range(6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    resumed = ResumableCSVLogger(tmp_path, resume_step=3)  # last.ckpt at global step 3 covers steps 0..2
    resumed.log_metrics(
        {"train/loss": 30.0, "val/ndcg@10": 0.5}, step=3
    )  # a new column: the header is rewritten
    resumed.log_metrics(
        {"train/loss": 30.0, "train/seconds_per_step": 0.1}, step=3
    )  # written early, then again
    resumed.save()
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert text[0] == "step,train/loss,train/seconds_per_step,val/ndcg@10"
    assert text[1:] == ["0,0.0,,", "1,1.0,,", "2,2.0,,", "3,30.0,,0.5", "3,,0.1,"]
    archived = (tmp_path / "metrics.attempt-1.csv").read_text().splitlines()
    assert len(archived) == 7, (
        "the first attempt's file is archived verbatim, rows after the checkpoint included"
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_writes_last_ckpt_after_the_running_batch_and_stops(tmp_path, tiny_bert_path, signum):
    """No periodic checkpoint is due (every 1000 steps): the signal alone writes ``last.ckpt``, at the end
    of the batch it arrived in, then training stops and the previous signal handlers are back."""
    import lightning as L

    from callbacks.resume import ResumeCheckpoint, TrainingStopped
    from datamodules.retrieval import RetrievalDataModule
    from lightning_modules.contrastive.module import ContrastiveModule

    class SignalDuringThirdBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signum)

    before = signal.getsignal(signum)
    trainer = L.Trainer(
        max_steps=10,
        callbacks=[
            SignalDuringThirdBatch(),
            ResumeCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1000),
        ],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    module = ContrastiveModule(embedder={"name_or_path": tiny_bert_path})
    with pytest.raises(TrainingStopped) as stop:
        trainer.fit(module, datamodule=RetrievalDataModule(path="tiny_hotpotqa", group_size=2, batch_size=2))
    assert (stop.value.signum, stop.value.step) == (signum, 3)
    assert read_global_step(tmp_path / "last.ckpt") == 3  # the batch the signal arrived in completed
    assert stop.value.checkpoint == str(tmp_path / "last.ckpt")
    assert signal.getsignal(signum) is before
