"""A NaN/inf loss stops training with a message and keeps the last good checkpoint; ``nan_policy=skip`` skips it."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from lightning_modules.base import NonFiniteLossError
from lightning_modules.contrastive.module import ContrastiveModule
from tests.helpers import run_experiment
from tests.reliability_helpers import FAST_TINY, only_run_dir


class ContrastiveWithBadLoss(ContrastiveModule):
    """The contrastive baseline whose loss turns non-finite at one global step (a simulated divergence)."""

    def __init__(self, bad_at_step: int = 3, bad_value: float = math.nan, **kwargs):
        super().__init__(**kwargs)
        self.bad_at_step, self.bad_value = bad_at_step, bad_value

    def checked_loss(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        if self.global_step == self.bad_at_step:
            loss = loss * self.bad_value
        return super().checked_loss(loss, batch_idx)


def overrides(extra: list[str]) -> list[str]:
    return [
        "exp=default",
        *FAST_TINY,
        "trainer.max_steps=5",
        f"model._target_={__name__}.{ContrastiveWithBadLoss.__name__}",
        "+model.bad_at_step=3",
        *extra,
    ]


@pytest.mark.parametrize("bad_value", ["nan", "inf"])
def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, bad_value):
    with pytest.raises(NonFiniteLossError) as err:
        run_experiment(overrides([f"+model.bad_value={bad_value}"]), tmp_path)
    message = str(err.value)
    assert f"non-finite training loss ({bad_value})" in message and "global step 3" in message
    assert "model.nan_policy=skip" in message and "last good checkpoint is kept" in message
    run_dir = only_run_dir(tmp_path)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3, "the checkpoint after the last finite step survives"
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (run_dir / "results.json").exists()


def test_nan_policy_skip_skips_the_batch_and_finishes(tmp_path):
    results = run_experiment(overrides(["+model.bad_value=nan", "model.nan_policy=skip"]), tmp_path)
    assert results["budget"]["steps"] == 5
    run_dir = only_run_dir(tmp_path)
    with (run_dir / "metrics.csv").open(newline="") as handle:
        skipped = [
            float(r["train/skipped_batches"])
            for r in csv.DictReader(handle)
            if r.get("train/skipped_batches")
        ]
    assert skipped and set(skipped) == {1.0}, "exactly one batch was skipped (the counter never passes 1)"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
