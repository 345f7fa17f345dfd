"""FSDP for retrievers that learn from a frozen LM: which modules become FSDP units, and the strategy.

FSDP flattens the parameters of each unit into one buffer. A unit holding both frozen and trainable
parameters either fails (``use_orig_params=False``) or allocates gradient and optimizer memory for the
frozen part too. So the units are chosen from the model itself, at wrap time:

- every transformer layer (transformers' ``GradientCheckpointingLayer``, or a class named in a model's
  ``_no_split_modules``): the frozen LM's decoder layers and the embedder's layers are always separate
  units, since no layer belongs to both models;
- inside a layer whose parameters are partly frozen (LoRA), every leaf module whose parameters all
  train (the ``lora_A`` / ``lora_B`` adapters) becomes a unit of its own, leaving the layer frozen;
- everything else (token embeddings, final norms, LM heads, tied weights, small method heads) stays
  in the root unit, which FSDP gathers for the whole training step. Modules are only ever entered
  through ``forward`` (FSDP gathers a unit's parameters there), so methods may call the embedder's
  and the frozen LM's helpers freely.

Activation checkpointing wraps the chosen layers after sharding (``embedder``, ``frozen_lm`` or
``all``: gradients flow through the frozen LM's activations in DREAM and LLM2Vec-Gen, so its layers
are worth recomputing too). Checkpoints are sharded (``state_dict_type="sharded"``): every rank writes
its own shard into a checkpoint *directory*, which the same Lightning code resumes from. Such a directory
is read back with ``torch.distributed.checkpoint``, which needs every tensor the model holds, so the
frozen shards are written too (each rank 1/world of them), unlike single-file checkpoints, where
``RetrieverModule`` keeps only the trained parameters and reloads the rest by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from lightning_modules.base import FROZEN_PREFIX

CHECKPOINTING_CHOICES = ("none", "embedder", "frozen_lm", "all")


def no_split_class_names(model: nn.Module) -> set[str]:
    """Class names that transformers itself never splits across devices (its decoder/encoder layers)."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def transformer_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of every transformer layer in ``model`` (outermost match only)."""
    layer_names = no_split_class_names(model)
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in found):
            continue
        if isinstance(module, GradientCheckpointingLayer) or type(module).__name__ in layer_names:
            found[name] = module
    return found


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def trainable_adapter_leaves(layer: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules of ``layer`` whose parameters all train, when ``layer`` also has frozen parameters."""
    parameters = list(layer.parameters())
    if all(p.requires_grad for p in parameters) or not any(p.requires_grad for p in parameters):
        return {}
    return {
        name: module
        for name, module in layer.named_modules()
        if name
        and not list(module.children())
        and own_parameters(module)
        and all(p.requires_grad for p in own_parameters(module))
    }


def fsdp_units(model: nn.Module) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of the modules to wrap as FSDP units (see the module docstring)."""
    units: dict[str, nn.Module] = {}
    for name, layer in transformer_layers(model).items():
        units[name] = layer
        for leaf_name, leaf in trainable_adapter_leaves(layer).items():
            units[f"{name}.{leaf_name}"] = leaf
    return units


def unit_of_each_parameter(model: nn.Module, unit_names: set[str]) -> dict[str, str]:
    """``{parameter name: name of the innermost unit holding it}`` (``""``: the root unit)."""
    owner: dict[str, str] = {}
    for name, _ in model.named_parameters():
        prefixes = [unit for unit in unit_names if name.startswith(f"{unit}.")]
        owner[name] = max(prefixes, key=len) if prefixes else ""
    return owner


def mixed_units(model: nn.Module, unit_names: set[str]) -> list[str]:
    """Non-root units that would hold frozen and trainable parameters together (should be empty)."""
    flags: dict[str, set[bool]] = {}
    parameters = dict(model.named_parameters())
    for name, unit in unit_of_each_parameter(model, unit_names).items():
        flags.setdefault(unit, set()).add(parameters[name].requires_grad)
    return sorted(unit for unit, seen in flags.items() if unit and len(seen) > 1)


def checkpointed_layers(model: nn.Module, which: str) -> dict[str, nn.Module]:
    """The transformer layers to recompute in backward: ``none``, ``embedder``, ``frozen_lm`` or ``all``."""
    if which not in CHECKPOINTING_CHOICES:
        raise ValueError(
            f"activation_checkpointing must be one of {', '.join(CHECKPOINTING_CHOICES)}; got '{which}'"
        )
    if which == "none":
        return {}
    layers = transformer_layers(model)
    if which == "frozen_lm":
        return {n: m for n, m in layers.items() if n.startswith(FROZEN_PREFIX)}
    if which == "embedder":
        return {n: m for n, m in layers.items() if not n.startswith(FROZEN_PREFIX)}
    return layers


class RetrieverFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with the units of :func:`fsdp_units` and sharded checkpoints.

    Args:
        activation_checkpointing_layers: ``none``, ``embedder``, ``frozen_lm`` or ``all``.
        state_dict_type: ``sharded`` (default: one shard per rank, no rank gathers the full model) or ``full``.
        **kwargs: any other ``FSDPStrategy`` argument (``sharding_strategy``, ``cpu_offload``, ...).
            Mixed precision follows ``trainer.precision`` (``bf16-mixed``: bf16 compute, fp32 master weights).
    """

    def __init__(
        self,
        activation_checkpointing_layers: Literal["none", "embedder", "frozen_lm", "all"] = "none",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        **kwargs: Any,
    ):
        if activation_checkpointing_layers not in CHECKPOINTING_CHOICES:
            raise ValueError(
                f"trainer.strategy.activation_checkpointing_layers must be one of {', '.join(CHECKPOINTING_CHOICES)}; "
                f"got '{activation_checkpointing_layers}'"
            )
        if "auto_wrap_policy" in kwargs:
            raise ValueError(
                "RetrieverFSDPStrategy chooses its FSDP units itself; do not pass auto_wrap_policy"
            )
        super().__init__(state_dict_type=state_dict_type, **kwargs)
        self.activation_checkpointing_layers = activation_checkpointing_layers

    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":
            raise RuntimeError(
                f"FSDP needs CUDA GPUs but this rank's device is '{self.root_device}'. "
                "On CPU use trainer=ddp_cpu or trainer=ddp_spawn (DDP over gloo)."
            )
        super().setup_environment()

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import CustomPolicy

        units = fsdp_units(model)
        mixed = mixed_units(model, set(units))
        if mixed:  # legal with use_orig_params=True, but the frozen part then gets gradient memory too
            rank_zero_warn(
                f"{len(mixed)} FSDP unit(s) mix frozen and trainable parameters (gradient memory is allocated "
                f"for the frozen ones): {', '.join(mixed[:5])}"
            )
        wrap_ids = {id(module) for module in units.values()}
        self.kwargs["auto_wrap_policy"] = CustomPolicy(lambda module: id(module) in wrap_ids)
        checkpointed = {
            id(m) for m in checkpointed_layers(model, self.activation_checkpointing_layers).values()
        }
        self._activation_checkpointing_kwargs = (
            {"check_fn": lambda module: id(module) in checkpointed} if checkpointed else {}
        )
        return super()._setup_model(model)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any | None = None
    ) -> None:
        """Put the frozen shards back into a sharded checkpoint (see the module docstring)."""
        if self._state_dict_type == "sharded" and "state_dict" in checkpoint:
            full = self.lightning_module_state_dict()
            frozen = {k: v for k, v in full.items() if k not in checkpoint["state_dict"]}
            checkpoint["state_dict"] = {**frozen, **checkpoint["state_dict"]}
        super().save_checkpoint(checkpoint, filepath, storage_options)
