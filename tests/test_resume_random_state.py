"""Per-rank random state in checkpoints: two gloo processes whose generators differ each get their own
state back on resume (``callbacks.resume.RandomStateCheckpoint``), through a weights-only save and load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from callbacks.resume import RandomStateCheckpoint

WORLD = 2


def save_then_resume(rank: int, path: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        torch.rand(1 + 3 * rank)  # the ranks consume different amounts (batch shapes differ per rank)
        state = RandomStateCheckpoint().state_dict()  # collective, as Lightning dumps on every rank
        expected = torch.rand(5)
        if rank == 0:  # only rank 0 writes the checkpoint
            torch.save({"callbacks": state}, path)
        dist.barrier()
        torch.manual_seed(123)  # the resumed process starts from the seed again
        resumed = RandomStateCheckpoint()
        resumed.load_state_dict(torch.load(path, weights_only=True)["callbacks"])
        resumed.on_train_start(None, None)  # type: ignore[arg-type]
        torch.save(torch.stack([expected, torch.rand(5)]), f"{path}.rank{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_each_rank_resumes_with_its_own_random_state(tmp_path: Path):
    path = str(tmp_path / "last.ckpt")
    mp.spawn(save_then_resume, args=(path, free_port()), nprocs=WORLD, join=True)
    draws = [torch.load(f"{path}.rank{rank}") for rank in range(WORLD)]
    for rank, (expected, after_resume) in enumerate(draws):
        torch.testing.assert_close(after_resume, expected, rtol=0, atol=0, msg=f"rank {rank}")
    assert not torch.equal(draws[0][0], draws[1][0]), "the ranks' generators must differ for this test"


def test_a_resume_with_another_number_of_ranks_warns_and_uses_rank_zeros_state():
    torch.manual_seed(0)
    by_rank = {}
    for rank in range(WORLD):
        by_rank[rank] = RandomStateCheckpoint().state_dict()["random_state"]
        torch.rand(3)
    resumed = RandomStateCheckpoint()
    with pytest.warns(UserWarning, match="random state of 2 ranks, this run has 1"):
        resumed.load_state_dict({"random_state": by_rank[0], "random_state_by_rank": by_rank})
    resumed.on_train_start(None, None)  # type: ignore[arg-type]
    first = torch.rand(4)
    torch.manual_seed(0)
    torch.testing.assert_close(first, torch.rand(4), rtol=0, atol=0)
