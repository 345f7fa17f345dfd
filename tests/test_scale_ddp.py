"""Two CPU processes over gloo (trainer=ddp_spawn) against one process on the same global batch.

- training: the contrastive module's loss and every gradient after DDP's all-reduce equal the
  single-process ones (all-gathered embeddings keep the local gradient; loss × world size cancels DDP's
  averaging), also when the ranks' ``positive_codes`` have different widths. Compared in float64: the two
  runs sum in different orders (each rank pads and multiplies its own half of the batch, DDP then adds the
  halves; the processes may also run different thread counts), which in float32 leaves ‖Δg‖/‖g‖ ≈ 3e-7 —
  a few elements with cancellation exceed any fixed elementwise rtol — and in float64 ≈ 5e-16
  (docs/scale.md). A real error (a missing all-reduce, a wrong scale) stays at O(1) in both;
- evaluation: each rank encodes half the corpus, and both ranks log the single-process metrics.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from callbacks.retrieval_eval import RetrievalEvaluation, shard_bounds
from datamodules.batch import RetrievalBatch
from datamodules.retrieval import RetrievalDataModule
from experiments import CONFIG_DIR
from lightning_modules.contrastive.module import ContrastiveModule
from lightning_modules.distributed import world_size

WORLD = 2


class RecordingContrastive(ContrastiveModule):
    """Trains on fixed per-rank batches and writes its loss, gradients and encoded-text counts to disk."""

    rank_batches: list[RetrievalBatch] = []
    dump_dir: str = ""

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self.rank_batches[self.trainer.global_rank]], batch_size=None)

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.recorded_loss = float(loss.detach()) / world_size()
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}
        torch.save(
            {"loss": self.recorded_loss, "grads": grads},
            Path(self.dump_dir) / f"train_rank{self.global_rank}.pt",
        )

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        self.encoded_documents = getattr(self, "encoded_documents", 0) + len(texts)
        return super().encode_documents(texts, show_progress)


class DumpValidationMetrics(L.Callback):
    def __init__(self, dump_dir: str):
        self.dump_dir = dump_dir

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        record = {"metrics": metrics, "encoded_documents": getattr(pl_module, "encoded_documents", 0)}
        (Path(self.dump_dir) / f"eval_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def trainer_from_config(name: str, **kwargs: Any) -> L.Trainer:
    """The real ``experiments/trainer/<name>.yaml``, shrunk to one step without logging."""
    overrides = [
        f"trainer={name}",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "trainer.gradient_clip_val=null",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, enable_model_summary=False, **kwargs
    )


def build_module(
    tiny_llama_path: str, dump_dir: Path, rank_batches: list[RetrievalBatch]
) -> RecordingContrastive:
    torch.manual_seed(0)
    module = RecordingContrastive(
        embedder={"name_or_path": tiny_llama_path, "pooling": "mean", "max_length": 32},
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        scheduler={"kind": "constant", "warmup_ratio": 0.0},
        eval_batch_size=8,
    )
    module.rank_batches, module.dump_dir = rank_batches, str(dump_dir)
    return module


def fixture_batches() -> list[RetrievalBatch]:
    """Two batches of 2 queries × 3 documents from the tiny fixture; rank 1's positive_codes are one column wider."""
    data = RetrievalDataModule(tiny=True, batch_size=2, group_size=3, seed=7)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    first, second = next(loader), next(loader)
    second = replace(second, positive_codes=torch.nn.functional.pad(second.positive_codes, (0, 1), value=-1))
    return [first, second]


def concatenated(batches: list[RetrievalBatch]) -> RetrievalBatch:
    width = max(b.positive_codes.shape[1] for b in batches)
    return RetrievalBatch(
        query_ids=[q for b in batches for q in b.query_ids],
        queries=[q for b in batches for q in b.queries],
        documents=[group for b in batches for group in b.documents],
        document_ids=[group for b in batches for group in b.document_ids],
        document_codes=torch.cat([b.document_codes for b in batches]),
        gold=torch.cat([b.gold for b in batches]),
        positive_codes=torch.cat(
            [
                torch.nn.functional.pad(b.positive_codes, (0, width - b.positive_codes.shape[1]), value=-1)
                for b in batches
            ]
        ),
    )


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_global_batch(tmp_path, tiny_llama_path):
    batches = fixture_batches()
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()

    single = build_module(tiny_llama_path, single_dir, [concatenated(batches)])
    trainer_from_config("cpu", limit_val_batches=0, precision="64-true").fit(single)
    distributed = build_module(tiny_llama_path, ddp_dir, batches)
    trainer_from_config("ddp_spawn", limit_val_batches=0, precision="64-true").fit(distributed)

    reference = torch.load(single_dir / "train_rank0.pt")
    assert reference["grads"], "the single-process run produced no gradients"
    for rank in range(WORLD):
        ranked = torch.load(ddp_dir / f"train_rank{rank}.pt")
        assert ranked["loss"] == pytest.approx(reference["loss"], rel=1e-12)
        assert ranked["grads"].keys() == reference["grads"].keys()
        for name, grad in reference["grads"].items():
            assert grad.dtype == torch.float64, name
            torch.testing.assert_close(
                ranked["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}, rank {rank}"
            )
    embedding_grad = next(g for n, g in reference["grads"].items() if "embed_tokens" in n)
    assert embedding_grad.abs().sum() > 0, "no gradient reached the embedder"


@pytest.mark.slow
def test_two_process_evaluation_shards_the_corpus_and_every_rank_logs_the_same_metrics(
    tmp_path, tiny_llama_path
):
    data = RetrievalDataModule(tiny=True, batch_size=2, group_size=2)
    corpus_size = len(data.load_corpus().corpus)
    results = {}
    for name in ("cpu", "ddp_spawn"):
        dump = tmp_path / name
        dump.mkdir()
        module = build_module(tiny_llama_path, dump, [])
        callbacks = [
            RetrievalEvaluation(cache_untrained=False, show_progress=False),
            DumpValidationMetrics(str(dump)),
        ]
        trainer_from_config(name, callbacks=callbacks, default_root_dir=str(dump)).validate(
            module, datamodule=data
        )
        results[name] = [json.loads(p.read_text()) for p in sorted(dump.glob("eval_rank*.json"))]

    (single,) = results["cpu"]
    assert single["encoded_documents"] == corpus_size
    assert set(single["metrics"]) == {"val/ndcg@10", "val/recall@10", "val/recall@100", "val/mrr@10"}
    assert len(results["ddp_spawn"]) == WORLD
    for record in results["ddp_spawn"]:
        assert record["encoded_documents"] == -(
            -corpus_size // WORLD
        )  # half the corpus (rounded up), not all of it
        assert record["metrics"].keys() == single["metrics"].keys()
        for key, value in single["metrics"].items():
            assert record["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_shard_bounds_cover_every_item_once():
    for count in (0, 1, 5, 7, 8):
        for world in (1, 2, 3, 4):
            covered = [i for rank in range(world) for i in range(*shard_bounds(count, world, rank))]
            assert covered == list(range(count)), (count, world)
