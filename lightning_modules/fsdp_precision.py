"""Mixed precision and gradient clipping for :class:`~lightning_modules.fsdp.RetrieverFSDPStrategy`.

Lightning's ``FSDPPrecision`` turns ``bf16-mixed`` into FSDP's ``MixedPrecision(param_dtype=bf16,
reduce_dtype=bf16, buffer_dtype=bf16)``: every parameter is cast to bf16 for compute (fp32 special tokens,
heads and predictors too), gradients are reduced in bf16, and every *buffer* is cast to bf16, including
the rotary ``inv_freq`` (a phase error that grows with the position: a different NLL than DDP at ~2k
tokens). ``32-true`` casts the whole model to fp32 (a bf16 frozen LM too). It also autocasts on ``"cuda"``
only and refuses ``gradient_clip_algorithm="norm"``.

:class:`RetrieverFSDPPrecision` makes ``*-mixed`` mean what it means without FSDP (docs/scale.md):
parameters and buffers keep the dtype the model was loaded in (fp32 trainable weights, a bf16 frozen LM),
compute runs under ``torch.autocast`` on the run's own device type (CPU included), gradients are reduced
in their parameters' dtype, and clipping by norm goes through the root FSDP module's ``clip_grad_norm_``,
which computes the norm over every rank's shard.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
from torch import nn

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class RetrieverFSDPPrecision(FSDPPrecision):
    """``FSDPPrecision`` that never casts parameters or buffers under ``*-mixed`` and clips by norm.

    Args:
        precision: Lightning's precision flag (``32-true``, ``bf16-mixed``, ...).
        device_type: where autocast runs (the strategy sets it from its root device when it wraps).
    """

    def __init__(self, precision: Any, device_type: str = "cuda"):
        super().__init__(precision)
        self.device_type = device_type
        self.root_module: nn.Module | None = None  # the root FSDP module, set by the strategy

    @property
    def mixed_precision_config(self):
        """``None`` (no FSDP casting) for ``32-true`` and ``*-mixed``; Lightning's policy for ``*-true``."""
        if self.precision == "32-true" or self.precision in AUTOCAST_DTYPES:
            return None
        return super().mixed_precision_config

    def convert_module(self, module: nn.Module) -> nn.Module:
        """``32-true`` leaves the model's dtypes alone (Lightning's plugin casts everything to fp32, a bf16
        frozen LM included, which plain DDP never does); ``bf16-true`` / ``16-true`` cast as Lightning does."""
        if self.precision == "32-true":
            return module
        return super().convert_module(module)

    def forward_context(self) -> AbstractContextManager:
        if self.precision in AUTOCAST_DTYPES:
            return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.precision])
        return super().forward_context()

    def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        """Clip the global gradient norm (all ranks' shards together) with FSDP's own collective."""
        if self.root_module is None:
            raise RuntimeError("gradient clipping by norm before the FSDP strategy wrapped the model")
        self.root_module.clip_grad_norm_(clip_val)
