"""Build the Lightning ``Trainer`` after checking its hardware options against this machine.

The multi-device trainer configs (``trainer=gpu|ddp|fsdp|ddp_spawn|ddp_cpu|fsdp_cpu``) instantiate
:func:`checked_trainer` instead of ``lightning.pytorch.Trainer``, so an impossible combination fails at
start-up with a sentence that names the config key and the fix, instead of deep inside a launcher or
after every rank has loaded a 3B model.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, Strategy

from lightning_modules.fsdp import RetrieverFSDPStrategy

GPU_ACCELERATORS = ("gpu", "cuda")
CPU_CAPABLE_FSDP = "retriever_fsdp"


class TrainerConfigError(ValueError):
    """A trainer option that this machine cannot run."""


def strategy_name(strategy: str | Strategy) -> str:
    """``"fsdp"``, ``"retriever_fsdp"``, ``"ddp"``, ``"ddp_spawn"``, ``"auto"``, ... for a strategy string or
    object (``retriever_fsdp``: the project's :class:`RetrieverFSDPStrategy`, which also runs on CPU)."""
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, RetrieverFSDPStrategy):
        return CPU_CAPABLE_FSDP
    if isinstance(strategy, FSDPStrategy):
        return "fsdp"
    start_method = getattr(strategy, "_start_method", None)
    name = type(strategy).__name__.removesuffix("Strategy").lower()
    return f"{name}_{start_method}" if start_method and start_method != "popen" else name


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX): without it CPU bf16 autocast is emulated."""
    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(check() for check in checks if check is not None)


def requested_device_count(devices: int | str | list[int]) -> int | None:
    """How many devices per node ``devices`` asks for (None: ``auto`` / ``-1``, i.e. all visible ones)."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            return None
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        return int(devices)
    return None if devices == -1 else int(devices)


def check_trainer_options(
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str | Strategy = "auto",
    precision: str | int = "32-true",
    cuda_devices: int | None = None,
    cpu_bf16: bool | None = None,
) -> None:
    """Raise :class:`TrainerConfigError` when the options cannot run here.

    ``cuda_devices`` / ``cpu_bf16`` default to what this machine has (they are arguments for tests).
    """
    cuda = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    on_gpu = accelerator in GPU_ACCELERATORS or (accelerator == "auto" and cuda > 0)
    name = strategy_name(strategy)
    precision = str(precision)
    if accelerator in GPU_ACCELERATORS and cuda == 0:
        raise TrainerConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU. "
            "Use trainer=cpu (one process) or trainer=ddp_cpu (several CPU processes over gloo)."
        )
    if name.startswith("fsdp") and not on_gpu:
        raise TrainerConfigError(
            f"trainer.strategy={name} needs CUDA GPUs (Lightning's FSDPStrategy refuses other devices), "
            f"but trainer.accelerator={accelerator} and {cuda} GPU(s) are visible. "
            "On CPU use trainer=fsdp_cpu (the project's FSDP strategy over gloo) or trainer=ddp_cpu instead."
        )
    wanted = requested_device_count(devices)
    if on_gpu and wanted is not None and wanted > cuda:
        raise TrainerConfigError(
            f"trainer.devices={devices} asks for {wanted} GPUs per node but {cuda} are visible "
            "(check CUDA_VISIBLE_DEVICES and the sbatch --gpus-per-node)."
        )
    if precision.startswith("bf16"):
        if on_gpu:
            if cuda > 0 and cuda_devices is None and not torch.cuda.is_bf16_supported():
                raise TrainerConfigError(
                    f"trainer.precision={precision} but this GPU has no bf16 support (pre-Ampere). "
                    "Use trainer.precision=16-mixed or 32-true."
                )
        elif not (cpu_supports_bf16() if cpu_bf16 is None else cpu_bf16):
            raise TrainerConfigError(
                f"trainer.precision={precision} on a CPU without native bf16 (no AVX512-BF16/AMX): "
                "it would run emulated and very slowly. Use trainer.precision=32-true."
            )
    if precision.startswith("16") and not on_gpu:
        raise TrainerConfigError(
            f"trainer.precision={precision} (float16 mixed precision) needs a GPU; on CPU use 32-true or bf16-mixed."
        )


def checked_trainer(**kwargs: Any) -> L.Trainer:
    """``lightning.pytorch.Trainer(**kwargs)`` after :func:`check_trainer_options`."""
    check_trainer_options(
        accelerator=str(kwargs.get("accelerator", "auto")),
        devices=kwargs.get("devices", "auto"),
        strategy=kwargs.get("strategy", "auto"),
        precision=kwargs.get("precision", "32-true"),
    )
    return L.Trainer(**kwargs)


# Config checkers (experiments/config_check.py) read the accepted keys from the signature: Trainer's.
checked_trainer.__signature__ = inspect.signature(L.Trainer)  # type: ignore[attr-defined]
