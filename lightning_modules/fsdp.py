"""FSDP for retrievers that learn from a frozen LM: which modules become FSDP units, and the strategy
(docs/scale.md). It runs on CUDA GPUs over NCCL and on CPU over gloo (``trainer=fsdp_cpu``, the tests).

FSDP flattens the parameters of each unit into one buffer of one dtype. A unit holding both frozen and
trainable parameters either fails (``use_orig_params=False``) or allocates gradient and optimizer memory
for the frozen part too. So the units are chosen from the model itself, at wrap time:

- every transformer layer (transformers' ``GradientCheckpointingLayer``, or a class named in a model's
  ``_no_split_modules``): the frozen LM's decoder layers and the embedder's layers are always separate
  units, since no layer belongs to both models;
- inside a layer whose parameters are partly frozen (LoRA), every leaf module whose parameters all
  train (the ``lora_A`` / ``lora_B`` adapters) becomes a unit of its own, leaving the layer frozen;
- everything else stays in the root unit, which FSDP gathers for the whole training step: its trainable
  part (token embeddings of a fully trained embedder, special tokens, heads, a predictor) is sharded, its
  frozen part (the frozen LM's embeddings, final norm and LM head) is replicated on every rank
  (``ignored_states``), so a bf16 frozen LM may sit next to fp32 trainable parameters. Code outside a
  training or validation step enters the model through the wrapped ``forward``
  (:func:`lightning_modules.distributed.call_through_strategy`), where FSDP gathers the root unit.

Activation checkpointing wraps the chosen layers after sharding (``embedder``, ``frozen_lm`` or
``all``: gradients flow through the frozen LM's activations in DREAM and LLM2Vec-Gen, so its layers
are worth recomputing too); the models holding them stop building implicit key/value caches, which a
recompute would extend twice. Checkpoints are sharded (``state_dict_type="sharded"``): every rank writes
its own shard into a checkpoint *directory*, staged and renamed into place once complete. Like
single-file checkpoints it holds the trained parameters (and their buffers) and the optimizer state only
(``RetrieverModule.trained_state_keys``): the frozen LM, a teacher or a LoRA embedder's frozen base are what
the constructor loads by name, so :meth:`RetrieverFSDPStrategy.load_checkpoint` reads back just the trained
tensors and keeps the frozen ones the model already holds.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.strategies.fsdp import (
    _METADATA_FILENAME,
    _distributed_checkpoint_load,
    _get_sharded_state_dict_context,
    _is_sharded_checkpoint,
    _setup_activation_checkpointing,
)
from lightning.pytorch.plugins.precision import FSDPPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.distributed.fsdp.wrap import CustomPolicy
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from lightning_modules.base import FROZEN_PREFIX
from lightning_modules.checkpoint_io import (
    publish_sharded_checkpoint,
    save_sharded_state,
    staging_path,
)
from lightning_modules.fsdp_precision import RetrieverFSDPPrecision

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


def root_parameters(model: nn.Module, unit_names: set[str]) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the parameters no unit holds (the root unit's, before any are ignored)."""
    parameters = dict(model.named_parameters())
    owner = unit_of_each_parameter(model, unit_names)
    return {name: parameters[name] for name, unit in owner.items() if not unit}


def replicated_parameters(model: nn.Module, unit_names: set[str]) -> list[nn.Parameter]:
    """The frozen parameters of the root unit: FSDP ignores them, every rank keeps a full copy.

    The root unit is gathered for the whole training step anyway, so keeping its frozen part whole costs
    no peak memory, and it lets that part keep its own dtype (a bf16 frozen LM's token embeddings next to
    fp32 special tokens or heads: one FlatParameter needs one dtype). Raises when the *trainable*
    parameters of the root mix dtypes, naming them.
    """
    root = root_parameters(model, unit_names)
    trainable_dtypes: dict[torch.dtype, list[str]] = {}
    for name, parameter in root.items():
        if parameter.requires_grad:
            trainable_dtypes.setdefault(parameter.dtype, []).append(name)
    if len(trainable_dtypes) > 1:
        listing = "; ".join(f"{dtype}: {', '.join(names[:3])}" for dtype, names in trainable_dtypes.items())
        raise ValueError(
            f"FSDP: the trainable parameters outside the transformer layers mix dtypes ({listing}); "
            "load them in one dtype (e.g. model.embedder.dtype=float32)"
        )
    return [parameter for parameter in root.values() if not parameter.requires_grad]


def disable_implicit_caches(model: nn.Module, layer_names: set[str]) -> list[str]:
    """Set ``config.use_cache = False`` on every transformers model holding one of ``layer_names``.

    A decoder called without ``use_cache=False`` builds a key/value cache and appends each layer's keys
    to it; when activation checkpointing recomputes that layer in backward, it appends them again and
    the attention sees twice the keys. Passes that want a cache still ask for one explicitly (DREAM's
    document prefix, whose cache is read-only afterwards: :class:`~lightning_modules.dream.lm_passes.DocumentPrefixCache`).
    Returns the names of the models changed.
    """
    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, PreTrainedModel) or not getattr(module.config, "use_cache", False):
            continue
        if any(layer.startswith(f"{name}." if name else "") for layer in layer_names):
            module.config.use_cache = False
            changed.append(name)
    return changed


class RetrieverFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with the units of :func:`fsdp_units`, on GPUs or on CPU (gloo).

    Beyond the parent class: the frozen root parameters are replicated (:func:`replicated_parameters`);
    ``*-mixed`` precision autocasts on the rank's device and casts no parameter or buffer, and gradient
    clipping by norm works (:mod:`lightning_modules.fsdp_precision`); a LightningModule is wrapped once,
    so ``trainer.validate`` before ``trainer.fit`` leaves fit a root FSDP unit that all-reduces the root's
    trainable parameters (Lightning would otherwise see wrapped layers and skip the root, #19015); sharded
    checkpoints are written to a staging folder and renamed into place once complete
    (:func:`lightning_modules.checkpoint_io.publish_sharded_checkpoint`).

    Args:
        activation_checkpointing_layers: ``none``, ``embedder``, ``frozen_lm`` or ``all``.
        state_dict_type: ``sharded`` (default: one shard per rank, no rank gathers the full model) or ``full``.
        **kwargs: any other ``FSDPStrategy`` argument (``sharding_strategy``, ``cpu_offload``,
            ``process_group_backend``, ...).
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
        self._wrapped: tuple[int, nn.Module] | None = None  # (id of the LightningModule, its FSDP root)

    @property
    def precision_plugin(self) -> FSDPPrecision:
        return FSDPStrategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin: Precision | None) -> None:
        if plugin is not None and type(plugin) is FSDPPrecision:  # what Lightning's connector creates
            plugin = RetrieverFSDPPrecision(plugin.precision)
        FSDPStrategy.precision_plugin.fset(self, plugin)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._wrapped is not None and self._wrapped[0] == id(model):
            return self._wrapped[1]  # validate before fit: keep the one root unit
        units = fsdp_units(model)
        mixed = mixed_units(model, set(units))
        if mixed:  # legal with use_orig_params=True, but the frozen part then gets gradient memory too
            rank_zero_warn(
                f"{len(mixed)} FSDP unit(s) mix frozen and trainable parameters (gradient memory is allocated "
                f"for the frozen ones): {', '.join(mixed[:5])}"
            )
        replicated = replicated_parameters(model, set(units))
        device = self.root_device
        for parameter in replicated:  # FSDP leaves ignored parameters where they are
            parameter.data = parameter.data.to(device)
        wrap_ids = {id(module) for module in units.values()}
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=device if device.type == "cpu" else device.index,
            auto_wrap_policy=CustomPolicy(lambda module: id(module) in wrap_ids),
            ignored_states=replicated or None,
            **self.kwargs,
        )
        chosen = checkpointed_layers(model, self.activation_checkpointing_layers)
        if chosen:
            disable_implicit_caches(model, set(chosen))
            checkpointed = {id(m) for m in chosen.values()}
            _setup_activation_checkpointing(wrapped, {"check_fn": lambda module: id(module) in checkpointed})
        plugin = self.precision_plugin
        if isinstance(plugin, RetrieverFSDPPrecision):
            plugin.device_type, plugin.root_module = device.type, wrapped
        self._wrapped = (id(model), wrapped)
        return wrapped

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any | None = None
    ) -> None:
        """Sharded: every rank writes its shard into a staging folder, rank 0 adds the metadata and a
        completion marker and renames the folder into place; a kill at any moment leaves the previous
        complete checkpoint (see :mod:`lightning_modules.checkpoint_io`). ``full``: Lightning's own."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        if storage_options is not None:
            raise TypeError("RetrieverFSDPStrategy.save_checkpoint does not take storage_options")
        path = Path(self.broadcast(str(filepath)))
        # the module's on_save_checkpoint left the trained tensors only: no shard of the frozen LM is written
        state = {"model": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        staging = staging_path(path)
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.barrier("sharded_checkpoint_staging")
        save_sharded_state(state, staging)
        self.barrier("sharded_checkpoint_written")
        if self.is_global_zero:
            publish_sharded_checkpoint(staging, path, checkpoint)
        self.barrier("sharded_checkpoint_published")

    def load_checkpoint(
        self, checkpoint_path: str | Path, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """A sharded checkpoint: read the trained tensors (and, when fitting, the optimizer states) into the
        wrapped model; the frozen ones stay as loaded by name. A full one: Lightning's own."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)
        module = self.lightning_module
        fitting = module.trainer.state.fn == TrainerFn.FITTING
        load_trained_shards(self.model, module.trained_state_keys(), path, self.optimizers if fitting else [])
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)


def load_trained_shards(
    wrapped: nn.Module, trained_keys: set[str], path: Path, optimizers: list[torch.optim.Optimizer]
) -> None:
    """Every rank must call this: load the keys ``trained_keys`` of the FSDP-wrapped ``wrapped`` from the
    sharded checkpoint folder ``path`` (a trained key it lacks is an error), then each optimizer's state."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
    from torch.distributed.fsdp import FullyShardedDataParallel

    with _get_sharded_state_dict_context(wrapped):
        current = wrapped.state_dict()
        trained = {"model": {k: v for k, v in current.items() if k in trained_keys}}
        _distributed_checkpoint_load(trained, path)
        wrapped.load_state_dict({**current, **trained["model"]}, strict=True)
        reader = FileSystemReader(path=path)
        for index, optimizer in enumerate(optimizers):
            key = f"optimizer_{index}"
            state = load_sharded_optimizer_state_dict(
                trained["model"], optimizer_key=key, storage_reader=reader
            )
            flat = FullyShardedDataParallel.optim_state_dict_to_load(wrapped, optimizer, state[key])
            optimizer.load_state_dict(flat)


def full_parameters(module: nn.Module, wrapped_root: nn.Module) -> dict[str, torch.Tensor] | None:
    """Every rank must call this: the full parameters of ``module`` (a part of the FSDP-wrapped model),
    on CPU, named as in an unwrapped module; on rank 0 (``None`` on the others).

    Only the root unit and the units inside ``module`` are gathered (``summon_full_params(rank0_only=True)``,
    on rank 0's device, then copied to its host memory), so the frozen LM is never materialised for an
    export of the embedder.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    units = [wrapped_root, *(m for m in module.modules() if isinstance(m, FullyShardedDataParallel))]
    rank0 = torch.distributed.get_rank() == 0
    with ExitStack() as stack:
        for unit in units:
            stack.enter_context(
                FullyShardedDataParallel.summon_full_params(
                    unit, recurse=False, writeback=False, rank0_only=True
                )
            )
        if not rank0:
            return None
        return {clean_tensor_name(n): p.detach().cpu().clone() for n, p in module.named_parameters()}
