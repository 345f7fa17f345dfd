"""Step 1 of a training run (experiments/train.py): check everything the run reads, before any model loads
and before the run directory is created, so a failed start costs seconds and leaves nothing behind.

In order: the config (keys, types, hardware, model files: ``config_check.py``), the run directory's stored
config and checkpoints (read only), then the data: every training and evaluation file is read and checked
(file:line errors), a run that would train 0 steps is refused naming the data size and the batch size, and
a method that needs what the data lacks (DREAM ``model.target=answer`` without answers) is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from omegaconf import DictConfig, OmegaConf

from experiments.cli import prepare_process
from experiments.config_check import ConfigError, check_config
from experiments.run_dir import check_no_secrets, check_stored_config, run_directory

if TYPE_CHECKING:  # the model stack is imported once the config checks have passed
    import lightning as L


@dataclass
class PreparedRun:
    """What the later steps need: the checked config, where the run lives, its data, where it resumes."""

    cfg: DictConfig
    overrides: list[str]
    run_dir: Path
    config: dict[str, Any]  # resolved; stored as <run_dir>/config.yaml once the models are built
    datamodule: L.LightningDataModule
    resume_from: str | None
    resume_step: int | None

    @property
    def run_id(self) -> str:
        """The run's name for loggers (W&B): experiment, overrides hash, job id."""
        return f"{self.cfg.name}-{self.run_dir.parent.name}-{self.run_dir.name}"


@runtime_checkable
class EvaluationData(Protocol):
    """A data module with an evaluation split (what ``callbacks.retrieval_eval`` reads)."""

    def eval_queries(self) -> list: ...


@runtime_checkable
class QuestionData(Protocol):
    """A data module whose training examples carry answers (``datamodules.retrieval.TrainExample``)."""

    path: str
    train_examples: Sequence[Any]


def prepare_run(cfg: DictConfig, overrides: list[str]) -> PreparedRun:
    """Check the config, the run directory and the data; build the data module (no model, no folder)."""
    prepare_process(bool(cfg.offline), cfg.threads)
    check_config(cfg)  # model files first: a typo'd model name fails before the model stack is imported
    import lightning as L
    from hydra.utils import instantiate

    from retrieval.cache import preserved_random_state

    L.seed_everything(cfg.seed, workers=True)
    run_dir = run_directory(cfg.output_root, cfg.name, overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    check_no_secrets(config)
    check_stored_config(run_dir, config)
    resume = resume_checkpoint(run_dir, cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    with preserved_random_state():  # reading the data draws nothing from the run's generators
        check_data(cfg, datamodule)
    return PreparedRun(cfg, overrides, run_dir, config, datamodule, *(resume or (None, None)))


# ---- resuming ---------------------------------------------------------------------------------------------
def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """``checkpoints/last.ckpt`` and SLURM's ``hpc_ckpt_N.ckpt`` (Lightning writes those to the run dir);
    files, or folders for sharded FSDP checkpoints (with the complete folders a kill during a sharded
    publish may have left next to them)."""
    from lightning_modules.checkpoint_io import sharded_checkpoint_candidates

    named = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    return [p for p in named if p.exists()] + [c for p in named for c in sharded_checkpoint_candidates(p)]


def resume_checkpoint(run_dir: Path, cfg: DictConfig) -> tuple[str, int] | None:
    """The loadable checkpoint with the highest global step, as ``(path, step)``; None: start fresh.

    An unreadable checkpoint (e.g. truncated by a tool that does not write atomically) is skipped with a
    warning in favour of the next newest one; if every candidate is unreadable the run stops rather than
    silently starting over.
    """
    if not cfg.resume:
        return None
    from lightning_modules.checkpoint_io import read_global_step

    readable, broken = [], []
    for path in checkpoint_candidates(run_dir):
        try:
            readable.append((read_global_step(path), path.name.startswith("hpc_"), path))
        except Exception as err:  # torch raises several types for a damaged zip
            broken.append(f"{path} ({type(err).__name__}: {str(err)[:120]})")
            print(f"warning: skipping unreadable checkpoint {broken[-1]}", file=sys.stderr)
    if not readable:
        if broken:
            raise ConfigError(
                "every checkpoint in the run directory is unreadable: "
                + "; ".join(broken)
                + ". Move them away to start over, or set resume=false."
            )
        return None
    step, _, path = max(readable)  # newest step; on a tie the HPC checkpoint (written at preemption)
    return str(path), step


# ---- data -------------------------------------------------------------------------------------------------
def check_data(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Read and check every file the run will read, through the data module's own loading."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    if isinstance(datamodule, EvaluationData) and (cfg.get("callbacks") or {}).get("retrieval_eval"):
        datamodule.eval_queries()
    check_training_steps(cfg, datamodule)
    check_answers_for_target(cfg, datamodule)


def check_training_steps(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Refuse a run whose training data yields no batch (incomplete batches are dropped)."""
    try:
        loader = datamodule.train_dataloader()
    except ValueError as err:  # e.g. a task smaller than one batch: the data module says which
        raise ConfigError(f"data: {err}") from None
    if len(loader) == 0:
        examples = len(loader.dataset)
        raise ConfigError(
            f"the run would train 0 steps: the training data has {examples} example(s) and "
            f"data.batch_size={loader.batch_size} (incomplete batches are dropped). "
            f"Set data.batch_size to at most {examples}, or train on more data."
        )


def check_answers_for_target(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """``model.target=answer`` (DREAM) needs an answer for every training question."""
    if cfg.model.get("target") != "answer" or not isinstance(datamodule, QuestionData):
        return
    missing = [e for e in datamodule.train_examples if not any(a.strip() for a in e.answers)]
    if missing:
        raise ConfigError(
            f"model.target=answer needs an answer for every training question, but {len(missing)} of "
            f"{len(datamodule.train_examples)} in {datamodule.path} have none (first: query '{missing[0].query_id}', "
            "field metadata.answers of queries.jsonl). Use model.target=auto (the query where there is "
            "no answer) or model.target=query."
        )
