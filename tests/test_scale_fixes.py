"""Single-process checks of the cluster fixes (docs/scale.md): similarity logits stay fp32 under bf16
autocast, LLM-Embedder's batch sampler sees Lightning's epochs, one host sync per optimizer step, and the
cluster recipes compose with the trainer group."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from lightning_modules.losses.contrastive import (
    info_nce_loss,
    multi_positive_info_nce_loss,
    similarity_logits,
)
from tests.helpers import compose_config


# ---- fp32 similarity logits under bf16 autocast ------------------------------------------------------------
def unit_rows(count: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=-1)


def test_similarity_logits_are_fp32_under_bf16_autocast():
    queries, documents, tau = unit_rows(8, 64, 0), unit_rows(24, 64, 1), 0.01
    reference = queries.double() @ documents.double().T / tau
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = similarity_logits(queries, documents, tau)
        plain = queries @ documents.T / tau  # what the losses computed before
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), reference, rtol=0, atol=1e-5)
    assert (plain.double() - reference).abs().max() > 1e-2, "bf16 autocast no longer rounds q @ d.T"


def test_contrastive_losses_under_bf16_autocast_equal_the_fp32_losses():
    queries, documents = unit_rows(4, 32, 2), unit_rows(12, 32, 3)
    targets = torch.arange(4) * 3
    positives = torch.zeros(4, 12, dtype=torch.bool)
    positives[torch.arange(4), targets] = True
    positives[0, 1] = True
    expected = (
        info_nce_loss(queries, documents, targets, positives, 0.01),
        multi_positive_info_nce_loss(queries, documents, positives, 0.01),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (
            info_nce_loss(queries, documents, targets, positives, 0.01),
            multi_positive_info_nce_loss(queries, documents, positives, 0.01),
        )
    for value, reference in zip(got, expected):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-5)


# ---- LLM-Embedder's homogeneous batch sampler follows Lightning's epochs ----------------------------------
class RecordBatches(L.LightningModule):
    """Trains nothing; records each epoch's query ids per task."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, dict[str, list[str]]] = {}

    def training_step(self, batch, batch_idx):
        by_task = self.seen.setdefault(self.current_epoch, {})
        by_task.setdefault(batch.task, []).extend(batch.query_ids)
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_epochs_reach_the_homogeneous_batch_sampler(tmp_path):
    cfg = compose_config(["exp=llm_embedder_tiny", "debug=tiny", "data.batch_size=2"])
    data = instantiate(cfg.data, _convert_="all")
    data.setup("fit")
    sizes = {name: len(items) for name, items in data.examples.items()}
    large = max(sizes, key=sizes.get)
    data.steps_per_epoch = 3  # an epoch draws far fewer examples than the large task holds
    module = RecordBatches()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    epochs = [module.seen[e] for e in range(3)]
    assert [sum(len(v) for v in e.values()) for e in epochs] == [6, 6, 6]
    assert epochs[1] != epochs[0], "epoch 1 replayed epoch 0's batches"
    drawn = [set(e.get(large, [])) for e in epochs]
    assert len(set().union(*drawn)) > max(len(d) for d in drawn), (
        f"later epochs draw no example of task '{large}' ({sizes[large]} examples) beyond one epoch's"
    )


# ---- one host synchronisation per optimizer step ----------------------------------------------------------
SYNCING_METHODS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


def count_host_syncs(monkeypatch, action) -> int:
    """Run ``action()`` counting the calls that copy a tensor's value to Python (each one a host sync on GPU)."""
    calls = []
    for name in SYNCING_METHODS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    action()
    monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize("poisoned", [False, True])
def test_the_finite_gradient_check_syncs_the_host_once_per_step(monkeypatch, poisoned):
    from lightning_modules.base import NonFiniteLossError, RetrieverModule

    module = RetrieverModule()
    module.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(20))  # 40 gradient tensors
    for parameter in module.parameters():
        parameter.grad = torch.ones_like(parameter)
    if poisoned:
        module.layers[7].bias.grad[2] = float("nan")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)

    def step():
        try:
            module.on_before_optimizer_step(optimizer)
        except NonFiniteLossError:
            step.raised = True

    step.raised = False
    assert count_host_syncs(monkeypatch, step) == 1
    assert step.raised == poisoned


# ---- cluster recipes compose with the trainer group -------------------------------------------------------
@pytest.mark.parametrize(
    ("trainer", "strategy_class"),
    [(None, "DDPStrategy"), ("ddp", "DDPStrategy"), ("fsdp", "RetrieverFSDPStrategy")],
)
def test_llm_embedder_base_takes_its_strategy_from_the_trainer_group(trainer, strategy_class):
    overrides = ["exp=llm_embedder_base"] + ([f"trainer={trainer}"] if trainer else [])
    cfg = compose_config(overrides)
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == strategy_class
    if strategy_class == "DDPStrategy":  # bge-base's pooler gets no gradient
        assert strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.use_distributed_sampler is False
    assert cfg.trainer.max_steps == 10000


# ---- the retrieval sampler under several ranks ------------------------------------------------------------
def test_ranks_share_one_global_order_that_lightning_neither_wraps_nor_reshuffles():
    from torch.utils.data import DistributedSampler

    from datamodules.retrieval import EpochAwareSampler

    single = EpochAwareSampler(11, seed=5)
    ranks = [EpochAwareSampler(11, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        order, shares = list(single), [list(s) for s in ranks]
        assert [len(s) for s in shares] == [5, 5]
        for step in range(2):  # per-rank batches of 2 = the single process's batches of 4
            together = shares[0][2 * step : 2 * step + 2] + shares[1][2 * step : 2 * step + 2]
            assert sorted(together) == sorted(order[4 * step : 4 * step + 4])
    assert {epoch for _, epoch in ranks[0]} == {1}, "items carry the epoch set by set_epoch"
    resumed = EpochAwareSampler(11, seed=5, num_replicas=2, rank=1)
    resumed.resume_at(1, 2)
    assert list(resumed) == shares[1][2:]
    # a DistributedSampler: Lightning's trainer leaves it in place (no wrapper, no second shuffle)
    assert all(isinstance(s, DistributedSampler) for s in ranks)
