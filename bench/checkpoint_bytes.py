"""Checkpoint size: what one training checkpoint of an experiment weighs under the old and the current policy.

The old policy dropped only the frozen LM (``frozen_lm.*``) from a checkpoint's state dict, so a LoRA
embedder's frozen base was written at every save; the current one (``RetrieverModule.on_save_checkpoint``)
keeps the trained parameters only. Both files hold the same optimizer state, loops and callbacks: one real
step is trained, ``trainer.save_checkpoint`` writes the current file, and the same checkpoint with the old
state dict is written next to it. Each is then saved again through the run's checkpoint IO
(``AtomicCheckpointIO``: temporary file, fsync, rename) and timed: seconds per save, median of 3.

``python -m bench.checkpoint_bytes [--experiment contrastive_tiny_smollm] [--out bench/results/checkpoint_bytes.json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint_bytes.json"
OVERRIDES = ("data.batch_size=2", "data.group_size=2", "trainer.max_steps=1", "trainer.precision=32-true")


def seconds_per_save(checkpoint: dict[str, Any], path: Path, repeats: int = 3) -> float:
    """Median wall seconds of one save through the atomic checkpoint IO (fsync included)."""
    from lightning_modules.checkpoint_io import AtomicCheckpointIO

    io, times = AtomicCheckpointIO(), []
    for _ in range(repeats):
        start = time.perf_counter()
        io.save_checkpoint(checkpoint, path)
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2], 3)


def measure(experiment: str, workdir: Path) -> dict[str, Any]:
    import lightning as L
    from hydra.utils import instantiate

    from bench.train_step import compose_experiment
    from experiments.cli import prepare_process

    cfg = compose_experiment(experiment, OVERRIDES, str(workdir))
    prepare_process(bool(cfg.offline), cfg.threads)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.model, _convert_="all")
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", limit_val_batches=0, default_root_dir=str(workdir), **quiet
    )
    trainer.fit(module, datamodule=datamodule)
    current = workdir / "current.ckpt"
    trainer.save_checkpoint(current)
    written = torch.load(current, weights_only=True)
    old_state = {k: v for k, v in module.state_dict().items() if not k.startswith("frozen_lm.")}
    checkpoint = {**written, "state_dict": old_state}  # the same checkpoint under the old policy
    old = workdir / "old_policy.ckpt"
    torch.save(checkpoint, old)
    trained = [p for p in module.parameters() if p.requires_grad]
    seconds_old = seconds_per_save(checkpoint, workdir / "timed_old.ckpt")
    seconds_now = seconds_per_save(written, workdir / "timed_current.ckpt")
    return {
        "experiment": experiment,
        "overrides": list(OVERRIDES),
        "embedder": cfg.model.embedder.name_or_path,
        "lora": dict(cfg.model.embedder.lora) if cfg.model.embedder.get("lora") else None,
        "frozen_lm": (cfg.model.get("frozen_lm") or {}).get("name_or_path"),
        "trained_parameters": sum(p.numel() for p in trained),
        "all_parameters": sum(p.numel() for p in module.parameters()),
        "checkpoint_bytes_old_policy": old.stat().st_size,
        "checkpoint_bytes": current.stat().st_size,
        "ratio": round(old.stat().st_size / current.stat().st_size, 1),
        "state_dict_keys_old_policy": len(checkpoint["state_dict"]),
        "state_dict_keys": len(written["state_dict"]),
        "seconds_per_save_old_policy": seconds_old,
        "seconds_per_save": seconds_now,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="append", help="experiment name (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from experiments.cli import go_offline

    go_offline()  # before anything imports the hub libraries
    results = []
    for experiment in args.experiment or ["contrastive_tiny_smollm"]:
        with tempfile.TemporaryDirectory(prefix="lsr-ckpt-bytes-") as workdir:
            results.append(measure(experiment, Path(workdir)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
