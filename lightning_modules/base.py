"""What every method's LightningModule shares: the embedder, the optional frozen LM, the optimiser, the
batch preparer, retrieval for evaluation, export, finite-loss checks, and checkpoints that hold the trained
parameters only (and the optimizer state of those)."""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from datamodules.batch import BatchPreparer, RetrievalBatch
from lightning_modules.models.embedder import Embedder
from lightning_modules.models.frozen_lm import FrozenCausalLM
from lightning_modules.models.tokenization import EmbedderBatchPreparer, mark_prepared

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
NO_SCHEDULE = {"kind": "constant", "warmup_ratio": 0.0}  # without a config: the optimizer's own learning rate
SCHEDULE_KINDS = ("linear", "cosine", "constant")
FROZEN_PREFIX = "frozen_lm."


WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class NonFiniteLossError(FloatingPointError):
    pass


def state_dict_name(name: str) -> str:
    """A parameter's name as ``state_dict()`` spells it: without the segments that FSDP, activation
    checkpointing and ``torch.compile`` wrappers add to ``named_parameters()``."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def gradients_are_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient on every rank is finite, with one host synchronisation per call.

    One fused norm per tensor (``torch._foreach_norm``, per dtype), one flag, one all-reduce (MIN) across ranks when
    distributed: under FSDP each rank holds a different shard, so the ranks must agree before one of them
    skips or stops. A norm that overflows fp32 counts as non-finite (clipping could not rescue it either).
    """
    if not grads:
        return True
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    finite = [torch.stack(torch._foreach_norm(group)).isfinite().all() for group in by_dtype.values()]
    flag = torch.stack(finite).all().to(torch.int32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


class RetrieverModule(L.LightningModule):
    """Base of all methods.

    Args:
        embedder: keyword arguments of :class:`Embedder` (``None`` for methods that embed otherwise).
        frozen_lm: keyword arguments of :class:`FrozenCausalLM`, or ``None``.
        optimizer: the optimizer constructor, called with the parameter groups: the config gives a
            ``functools.partial`` of ``torch.optim.AdamW`` (``_partial_: true``); a checkpoint gives the same
            as a ``{"_target_", "_partial_", ...}`` dict. ``None``: ``torch.optim.AdamW``'s own defaults.
        scheduler: ``{"kind": "linear"|"cosine"|"constant", "warmup_ratio": float}`` (``None``: constant).
        nan_policy: ``"raise"`` stops on a NaN/inf loss (the last good checkpoint is kept);
            ``"skip"`` skips that batch's update and counts it.
        eval_batch_size / eval_precision: encoding settings for retrieval evaluation.
    """

    def __init__(
        self,
        embedder: dict[str, Any] | None = None,
        frozen_lm: dict[str, Any] | None = None,
        optimizer: OptimizerFactory | Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        nan_policy: str = "raise",
        eval_batch_size: int = 64,
        eval_precision: str = "fp32",
    ):
        super().__init__()
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got '{nan_policy}'")
        self.embedder = Embedder(**embedder) if embedder is not None else None
        self.frozen_lm = FrozenCausalLM(**frozen_lm) if frozen_lm is not None else None
        self.optimizer_factory = optimizer_factory(optimizer)
        self.scheduler_args = dict(scheduler if scheduler is not None else NO_SCHEDULE)
        if self.scheduler_args["kind"] not in SCHEDULE_KINDS:
            raise ValueError(
                f"scheduler.kind must be one of {', '.join(SCHEDULE_KINDS)}, got '{self.scheduler_args['kind']}'"
            )
        self.nan_policy = nan_policy
        self.eval_batch_size = eval_batch_size
        self.eval_precision = eval_precision
        self.skipped_batches = 0

    def save_hyperparameters(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's, with the optimizer recorded as its plain config (``_target_``, ``_partial_``,
        arguments): checkpoints then load weights-only, and loggers and model cards show the arguments."""
        kwargs.setdefault("frame", inspect.currentframe().f_back)
        super().save_hyperparameters(*args, **kwargs)
        for hparams in (self._hparams, getattr(self, "_hparams_initial", None)):
            if hparams is not None and "optimizer" in hparams:
                hparams["optimizer"] = optimizer_config(hparams["optimizer"])

    # ---- the batch: tokenised by this module's preparer in the DataLoader workers ----------------------
    def batch_preparer(self) -> BatchPreparer:
        """The collate-time work of this method (datamodules call it through ``Collator``): by default the
        embedder's tokenisation of queries and every group member."""
        if self.embedder is None:
            return mark_prepared
        return EmbedderBatchPreparer(self.embedder.text_tokenizer)

    def prepared(self, batch: RetrievalBatch) -> RetrievalBatch:
        """``batch`` as the preparer leaves it; prepared here (on this module's device) only when it arrives
        unprepared, e.g. built by hand or by a DataLoader that does not use :func:`module_preparer`."""
        return batch if batch.prepared else self.batch_preparer()(batch).to(self.device)

    # ---- retrieval interface used by the evaluation callback -------------------------------------------
    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self.embedder.encode_queries(
            texts, batch_size=self.eval_batch_size, precision=self.eval_precision, show_progress=show_progress
        )

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self.embedder.encode_documents(
            texts, batch_size=self.eval_batch_size, precision=self.eval_precision, show_progress=show_progress
        )

    def untrained_score_key(self) -> dict[str, Any] | None:
        """What determines this module's score before training (for the score cache); None: don't cache."""
        if self.embedder is None:
            return None
        return {
            "model": self.embedder.name_or_path,
            "pooling": self.embedder.pooling,
            "max_length": self.embedder.max_length,
            "instructions": self.embedder.instructions,
            "append_eos": self.embedder.append_eos,
            "precision": self.eval_precision,
            # only when set, so the keys of causal embedders (and their cached scores) stay as they were
            **({"attention": self.embedder.attention} if self.embedder.attention != "causal" else {}),
        }

    def export(
        self,
        path: str | Path,
        model_card: str | None = None,
        parameters: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the trained embedder as a plain HF / sentence-transformers folder.

        ``parameters``: the embedder's full parameters gathered from a sharded (FSDP) model; they are
        loaded into a fresh, unwrapped copy of the embedder built from its configuration.
        """
        if self.embedder is None:
            raise NotImplementedError(f"{type(self).__name__} has no embedder to export")
        embedder = self.embedder if parameters is None else self.unwrapped_embedder(parameters)
        return embedder.save_pretrained(path, model_card=model_card)

    def unwrapped_embedder(self, parameters: dict[str, torch.Tensor]) -> Embedder:
        """A new :class:`Embedder` from ``hparams["embedder"]`` holding ``parameters`` (every one of them)."""
        embedder = Embedder(**self.hparams["embedder"])
        missing = set(dict(embedder.named_parameters())) - set(parameters)
        unexpected = embedder.load_state_dict(parameters, strict=False).unexpected_keys
        if missing or unexpected:
            raise ValueError(
                f"gathered embedder parameters do not fit the embedder: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        return embedder

    # ---- loss bookkeeping -------------------------------------------------------------------------------
    def checked_loss(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        """Return ``loss`` if finite; else raise (``nan_policy=raise``) or return None to skip the batch."""
        if torch.isfinite(loss).all():
            return loss
        if self.nan_policy == "skip":
            self.skipped_batches += 1
            self.log("train/skipped_batches", float(self.skipped_batches))
            return None
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) at global step {self.global_step}, batch {batch_idx}. "
            "The run stopped; the last good checkpoint is kept. Lower the learning rate, check the data, "
            "or set model.nan_policy=skip to skip such batches."
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not gradients_are_finite([p.grad for p in self.parameters() if p.grad is not None]):
            if self.nan_policy == "skip":
                optimizer.zero_grad(set_to_none=True)
                self.skipped_batches += 1
                return
            raise NonFiniteLossError(
                f"non-finite gradient at global step {self.global_step}; the last good checkpoint is kept "
                "(set model.nan_policy=skip to skip such batches)"
            )

    # ---- optimisation -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self):
        """The configured optimizer over two parameter groups (no weight decay for biases, norms and
        parameters marked ``no_weight_decay``) and the warmup + ``kind`` learning-rate schedule per step."""
        decay, no_decay = [], []
        for name, param in self.trainable_parameters():
            if name.startswith(FROZEN_PREFIX):
                raise RuntimeError(
                    f"frozen LM parameter '{name}' requires grad: the frozen LM must stay frozen"
                )
            skip = param.ndim < 2 or "norm" in name.lower() or getattr(param, "no_weight_decay", False)
            (no_decay if skip else decay).append(param)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]  # decay: the optimizer's own
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.scheduler_args["warmup_ratio"] * total)
        kind = self.scheduler_args["kind"]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if kind == "constant":
                return 1.0
            if kind == "cosine":
                return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: the trained parameters only; frozen weights come back from the named models --------
    def trained_state_keys(self) -> set[str]:
        """The state-dict keys a checkpoint stores: every parameter that trains, and the buffers of the
        modules that own one. Everything else (the frozen LM, a teacher, a LoRA embedder's frozen base) is
        what the constructor loads by name, so checkpoints leave it out and loading puts it back."""
        keys: set[str] = set()
        for name, module in self.named_modules(remove_duplicate=False):
            prefix = f"{name}." if name else ""
            trains = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            keys.update(state_dict_name(prefix + n) for n in trains)
            if trains:
                keys.update(state_dict_name(prefix + n) for n, _ in module.named_buffers(recurse=False))
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            kept = self.trained_state_keys()
            for key in [k for k in state if k not in kept]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put back the frozen weights (this module's own, loaded by name); a missing or unknown trained
        key is still an error of the strict load that follows."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        kept = self.trained_state_keys()
        for key, value in self.state_dict().items():
            if key not in kept:
                state.setdefault(key, value)

    # evaluation runs in a callback at validation time; the validation loop itself has nothing to do
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None


def optimizer_factory(spec: OptimizerFactory | Mapping[str, Any] | None) -> OptimizerFactory:
    """The optimizer constructor for ``spec``: a callable as it is, a Hydra ``_partial_`` config (what a
    checkpoint's hyperparameters hold) instantiated, ``None`` as ``torch.optim.AdamW``."""
    if spec is None:
        return torch.optim.AdamW
    if callable(spec):
        return spec
    if "_target_" not in spec:
        raise ValueError(
            f"model.optimizer must name its class (_target_: torch.optim.AdamW, _partial_: true), got {dict(spec)}"
        )
    from hydra.utils import instantiate

    return instantiate(dict(spec), _partial_=True)


def optimizer_config(factory: Any) -> Any:
    """A ``functools.partial`` optimizer as its plain Hydra config (``_target_``, ``_partial_``, arguments);
    anything else unchanged."""
    if isinstance(factory, functools.partial) and isinstance(factory.func, type) and not factory.args:
        module, name = factory.func.__module__, factory.func.__qualname__
        package = module.rpartition(".")[0]  # torch.optim.adamw.AdamW is exported as torch.optim.AdamW
        if package and getattr(sys.modules.get(package), name, None) is factory.func:
            module = package
        return {"_target_": f"{module}.{name}", "_partial_": True, **factory.keywords}
    if factory is torch.optim.AdamW:
        return {"_target_": "torch.optim.AdamW", "_partial_": True}
    return factory
