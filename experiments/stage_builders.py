"""The stage kinds a pipeline can run (experiments/stage_runner.py; docs/stages.md), each a settings class and
a builder that writes the stage's output folder:

- ``llm2vec_mntp``: LLM2Vec step 2 (bidirectional attention + MNTP, LoRA merged) on unlabeled text;
- ``llm2vec_simcse``: LLM2Vec step 3 (unsupervised SimCSE, LoRA merged) on the MNTP output: the teacher;
- ``llm2vec_released``: a released LLM2Vec teacher (base + MNTP adapter + SimCSE adapter, merged);
- ``reranker_sft``: Rabtriever's first stage, the LM fine-tuned as a generative reranker on relevance labels.

Every builder trains in this process on one device of the run's accelerator (the run's own trainer starts
only afterwards); ``debug=tiny`` shrinks each kind by its ``tiny`` settings (a random tiny LM, the fixture's
text, 2 steps). A kind's ``version`` is part of every output's key: raise it when a builder's result changes.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

TINY_STEPS = 2


@dataclass(frozen=True)
class StageContext:
    """What a builder takes from the run rather than from its own settings."""

    accelerator: str = "cpu"
    tiny: bool = False
    progress: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainedStage:
    """Settings every trained stage has."""

    kind: str
    label_use: str
    model: str
    steps: int
    batch_size: int
    lr: float
    lora: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    precision: str = "32-true"
    gradient_checkpointing: bool = False
    gradient_clip: float | None = 1.0
    seed: int = 42
    log_every: int = 10


@dataclass(frozen=True, kw_only=True)
class MNTPSettings(TrainedStage):
    sources: list[str]
    max_texts_per_source: int | None = None
    max_length: int = 512
    mlm_probability: float = 0.2
    mask_token: str | None = "_"
    warmup_steps: int = 0
    weight_decay: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SimCSESettings(TrainedStage):
    sources: list[str]
    max_texts_per_source: int | None = None
    max_length: int = 128
    dropout: float = 0.3
    temperature: float = 0.05
    warmup_steps: int = 0
    weight_decay: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ReleasedSettings:
    kind: str
    label_use: str
    mntp_adapter: str
    simcse_adapter: str
    base: str | None = None
    dtype: str = "float32"


@dataclass(frozen=True, kw_only=True)
class RerankerSFTSettings(TrainedStage):
    prompt: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    loss: str = "pointwise"


def fit_stage(name: str, module: Any, datamodule: Any, settings: TrainedStage, context: StageContext) -> dict:
    """Train ``module`` for ``settings.steps`` on one device of the run's accelerator; the loss summary."""
    import lightning as L
    from lightning.pytorch.plugins.environments import LightningEnvironment

    from callbacks.stage_progress import StageProgress

    progress = StageProgress(name, settings.steps, settings.log_every)
    with tempfile.TemporaryDirectory(prefix="lsr-stage-") as scratch:
        trainer = L.Trainer(
            max_steps=settings.steps,
            accelerator=context.accelerator,
            devices=1,
            precision=settings.precision,
            gradient_clip_val=settings.gradient_clip,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=context.progress,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[progress],
            default_root_dir=scratch,
            plugins=[LightningEnvironment()],  # one process even inside a SLURM / torchrun job
        )
        trainer.fit(module, datamodule=datamodule)
    return progress.summary()


def seeded(settings: TrainedStage) -> None:
    import lightning as L

    L.seed_everything(settings.seed, workers=True, verbose=False)


def build_mntp(name: str, settings: MNTPSettings, out: Path, context: StageContext) -> dict:
    from datamodules.unlabeled_text import UnlabeledTextDataModule, load_unlabeled_texts
    from lightning_modules.llm2vec.mntp import MNTPModule

    seeded(settings)
    texts = load_unlabeled_texts(settings.sources, settings.max_texts_per_source)
    module = MNTPModule(settings.model, **lora_module_args(settings, context))
    data = UnlabeledTextDataModule(
        texts,
        module.tokenizer,
        "mntp",
        settings.batch_size,
        settings.max_length,
        mlm_probability=settings.mlm_probability,
        mask_token=settings.mask_token,
        seed=settings.seed,
    )
    metrics = fit_stage(name, module, data, settings, context)
    module.save_merged(out)
    return {**metrics, "texts": len(texts), "blocks": len(data.items), "attention": "bidirectional"}


def build_simcse(name: str, settings: SimCSESettings, out: Path, context: StageContext) -> dict:
    from datamodules.unlabeled_text import UnlabeledTextDataModule, load_unlabeled_texts
    from lightning_modules.llm2vec.simcse import SimCSEModule

    seeded(settings)
    texts = load_unlabeled_texts(settings.sources, settings.max_texts_per_source)
    module = SimCSEModule(
        settings.model,
        dropout=settings.dropout,
        temperature=settings.temperature,
        **lora_module_args(settings, context),
    )
    data = UnlabeledTextDataModule(
        texts, module.tokenizer, "simcse", settings.batch_size, settings.max_length, seed=settings.seed
    )
    metrics = fit_stage(name, module, data, settings, context)
    module.save_merged(out)
    return {**metrics, "texts": len(texts), "attention": "bidirectional", "pooling": "mean"}


def lora_module_args(settings: MNTPSettings | SimCSESettings, context: StageContext) -> dict[str, Any]:
    return {
        "lora": settings.lora,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "warmup_steps": settings.warmup_steps,
        "dtype": settings.dtype,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "tiny": context.tiny,
    }


def build_released(name: str, settings: ReleasedSettings, out: Path, context: StageContext) -> dict:
    from lightning_modules.llm2vec.released import save_released_teacher

    merged = save_released_teacher(
        out, settings.mntp_adapter, settings.simcse_adapter, settings.base, settings.dtype, context.tiny
    )
    return {**merged, "attention": "bidirectional", "pooling": "mean"}


def build_reranker_sft(name: str, settings: RerankerSFTSettings, out: Path, context: StageContext) -> dict:
    from datamodules.retrieval import RetrievalDataModule
    from lightning_modules.rabtriever.reranker_sft import RerankerSFTModule

    seeded(settings)
    data = RetrievalDataModule(
        **{**settings.data, "batch_size": settings.batch_size, "seed": settings.seed, "tiny": context.tiny}
    )
    module = RerankerSFTModule(
        settings.model,
        prompt=settings.prompt,
        lora=settings.lora,
        lr=settings.lr,
        dtype=settings.dtype,
        loss=settings.loss,
        gradient_checkpointing=settings.gradient_checkpointing,
        tiny=context.tiny,
    )
    metrics = fit_stage(name, module, data, settings, context)
    module.save_merged(out)
    return {**metrics, "train_queries": len(data.train_examples), "loss": settings.loss}


class StageKind(NamedTuple):
    settings: type
    build: Callable[[str, Any, Path, StageContext], dict]
    version: int
    tiny: dict[str, Any]  # settings replaced under debug=tiny


TINY_TEXT = {"sources": ["tiny_fixture"], "max_texts_per_source": 64, "steps": TINY_STEPS, "batch_size": 2}
KINDS: dict[str, StageKind] = {
    "llm2vec_mntp": StageKind(
        MNTPSettings, build_mntp, 1, {**TINY_TEXT, "max_length": 16, "mask_token": "<unk>"}
    ),
    "llm2vec_simcse": StageKind(SimCSESettings, build_simcse, 1, {**TINY_TEXT, "max_length": 16}),
    "llm2vec_released": StageKind(ReleasedSettings, build_released, 1, {}),
    "reranker_sft": StageKind(
        RerankerSFTSettings, build_reranker_sft, 1, {"steps": TINY_STEPS, "batch_size": 2}
    ),
}


def settings_fields(kind: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(KINDS[kind].settings)}


def make_settings(kind: str, values: dict[str, Any], tiny: bool) -> Any:
    """The kind's settings object from a stage's resolved config (``tiny``: with its debug=tiny settings)."""
    spec = KINDS[kind]
    return spec.settings(**{**values, **(spec.tiny if tiny else {})})
