"""The optimizer is a ``_partial_`` target in the config: the module builds it with its two parameter groups,
records it as plain config, and a checkpoint of it loads weights-only."""

from __future__ import annotations

import functools

import lightning as L
import torch
from hydra.utils import instantiate

from datamodules.retrieval import RetrievalDataModule
from lightning_modules.contrastive.module import ContrastiveModule
from tests.helpers import compose_config


def test_the_config_gives_a_partial_adamw_and_the_module_splits_weight_decay(tiny_bert_path):
    cfg = compose_config(["exp=default"])
    factory = instantiate(cfg.model.optimizer)
    assert isinstance(factory, functools.partial) and factory.func is torch.optim.AdamW
    module = ContrastiveModule(
        embedder={"name_or_path": tiny_bert_path},
        optimizer=factory,
        scheduler={"kind": "linear", "warmup_ratio": 0.5},
    )
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()  # what configure_optimizers reads
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert (decay["initial_lr"], decay["weight_decay"], no_decay["weight_decay"]) == (1e-5, 0.01, 0.0)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    scheduler = configured["lr_scheduler"]["scheduler"]
    assert scheduler.lr_lambdas[0](0) == 1 / 6  # warmup: 5 of 10 steps, (step + 1) / (warmup + 1)
    assert module.hparams["optimizer"] == {
        "_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5, "weight_decay": 0.01
    }  # fmt: skip


def test_a_checkpoint_records_the_optimizer_as_config_and_loads_weights_only(tmp_path, tiny_bert_path):
    module = ContrastiveModule(
        embedder={"name_or_path": tiny_bert_path},
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.1),
    )
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=RetrievalDataModule(path="tiny_hotpotqa", group_size=2, batch_size=2))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    stored = torch.load(tmp_path / "model.ckpt", weights_only=True)["hyper_parameters"]["optimizer"]
    assert stored == {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-4, "weight_decay": 0.1}
    restored = ContrastiveModule.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)
    rebuilt = restored.optimizer_factory([torch.nn.Parameter(torch.zeros(2, 2))])
    assert isinstance(rebuilt, torch.optim.AdamW)
    assert (rebuilt.defaults["lr"], rebuilt.defaults["weight_decay"]) == (3e-4, 0.1)
