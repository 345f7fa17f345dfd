"""Check a composed config before anything runs: every mistake is named with its key and the valid choices.

- Unknown experiments and group options (the valid ones listed from the config search path), unknown or
  typo'd keys, on the command line or inside an experiment file: the message lists the valid keys at that
  level (and the closest match). Sections with a ``_target_`` (at any depth: ``model.optimizer``,
  ``trainer.strategy``) are checked against the target's constructor, ``trainer`` against ``Trainer``; a
  method's ``embedder`` / ``frozen_lm`` / ``scheduler`` blocks against :class:`Embedder`,
  :class:`FrozenCausalLM` and the scheduler options.
- Values of the wrong type (``trainer.max_steps=abc``), from the same signatures (``config_types.py``).
- Incompatible options: FSDP / DeepSpeed or a GPU accelerator without a GPU, fp16 on CPU.
- Required values left at ``???`` (e.g. ``data.path`` of ``data=beir_local``).
- Missing model files: a ``name_or_path`` that is neither a registry alias, a complete local folder, nor a
  model in the local Hugging Face cache while hub downloads are off.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from experiments import CONFIG_DIR
from experiments.config_types import HYDRA_KEYS, parameter_annotations, root_annotations, type_problem

GROUPS = ("model", "data", "trainer", "logger", "callbacks")
MODEL_ALIASES = {"smollm2-135m-instruct", "all-minilm-l6-v2"}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.gguf", "*.pt")
_CLOSED_MODULES = ("lightning", "pytorch_lightning", "torch")  # their __init__(**kwargs) reject unknown keys


class ConfigError(ValueError):
    """A config key, value or combination the run cannot use; the message says what to change."""


# ---- composing with helpful errors ------------------------------------------------------------------------
def compose_checked(overrides: list[str]) -> DictConfig:
    """``hydra.compose`` of the root config; Hydra's errors become :class:`ConfigError` messages that name the
    unknown option or key and list the valid ones (read from the config search path, not from error text)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            return compose(config_name="config", overrides=overrides)
        except MissingConfigException as err:
            raise ConfigError(missing_option_message(err)) from None
        except (ConfigCompositionException, OverrideParseException) as err:
            raise ConfigError(bad_override_message(overrides) or str(err)) from None


def missing_option_message(err: MissingConfigException) -> str:
    """``unknown experiment 'defualt' (no experiments/exp/defualt.yaml). Did you mean 'default'? ...``"""
    if not err.missing_cfg_file or err.options is None:
        return str(err)
    group, _, name = err.missing_cfg_file.rpartition("/")
    what = "experiment" if group == "exp" else f"'{group}' option"
    hint = difflib.get_close_matches(name, err.options, n=1)
    return (
        f"unknown {what} '{name}' (no experiments/{group}/{name}.yaml)."
        + (f" Did you mean '{hint[0]}'?" if hint else "")
        + f" Available: {', '.join(err.options)}"
    )


def bad_override_message(overrides: list[str]) -> str | None:
    """The first ``key=value`` override whose key does not exist, with the valid keys at that level: found
    by composing the group choices alone (``exp=``, ``model=``, ``debug=``...) and looking each key up."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    loader = GlobalHydra.instance().config_loader()
    is_group = {o.input_line: bool(loader.get_group_options(o.key_or_group)) for o in parsed}
    try:
        base = compose(config_name="config", overrides=[line for line, group in is_group.items() if group])
    except Exception:  # the group choices themselves fail: Hydra's own message is the best there is
        return None
    for override in parsed:
        if is_group[override.input_line] or override.is_add() or override.is_force_add():
            continue
        problem = missing_key_message(base, override.key_or_group)
        if problem:
            return problem
    return None


def missing_key_message(cfg: DictConfig, full_key: str) -> str | None:
    """None when ``full_key`` exists in ``cfg``; else what is wrong with it and the valid keys there."""
    parts = full_key.split(".")
    node: Any = cfg
    depth = 0
    while depth < len(parts) - 1 and isinstance(node, DictConfig) and parts[depth] in node:
        node = node[parts[depth]]
        depth += 1
    if not isinstance(node, DictConfig):
        return f"'{'.'.join(parts[:depth])}' is a value, not a section: cannot set '{full_key}'"
    if parts[depth] in node and depth == len(parts) - 1:
        return None
    return unknown_key_message(".".join(parts[:depth]), parts[depth], list(node.keys()))


def unknown_key_message(section: str, key: str, valid: list[str]) -> str:
    where = f"{section}.{key}" if section else key
    hint = difflib.get_close_matches(key, [str(v) for v in valid], n=1)
    return (
        f"unknown config key '{where}'."
        + (f" Did you mean '{hint[0]}'?" if hint else "")
        + f" Valid keys under '{section or '<root>'}': {', '.join(sorted(str(v) for v in valid))}"
    )


# ---- checking a composed config ---------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found: stage definitions, missing values, missing
    model files (checked early: cheap, no model code imported), unknown keys, values of the wrong type,
    bad combinations."""
    from experiments.stage_runner import check_stages

    check_stages(cfg)  # before anything resolves a ${stage:...} reference
    check_required_values(cfg)
    check_root(cfg)
    if not cfg.get("tiny_models"):
        check_data_source(cfg.get("data"))
        offline = bool(cfg.get("offline", True)) or os.environ.get("HF_HUB_OFFLINE") == "1"
        check_model_files(cfg, offline)
    for section, node, target in target_sections(cfg):
        check_keys(section, [str(k) for k in node.keys()], accepted_keys(target))
        report(type_problem(section, node, parameter_annotations(target)))
        check_arguments_hook(section, node, target)
    check_module_lm_users(cfg)
    check_logger(cfg.get("logger") or {})
    if cfg.get("model") is not None:
        check_method_sections(cfg.model)
    check_hardware(cfg.trainer)


def report(problem: str | None) -> None:
    if problem:
        raise ConfigError(problem)


def check_required_values(cfg: DictConfig) -> None:
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(
            f"config key '{key}' has no value (???): set it, e.g. on the command line {key}=..."
        ) from None


def check_root(cfg: DictConfig) -> None:
    """Root keys: only those of ``experiments/config.yaml`` and the groups, with their types."""
    root = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()) or {}
    valid = {k for k in root if k not in ("defaults", "hydra")} | set(GROUPS)
    for key in cfg:
        if key not in valid:
            raise ConfigError(unknown_key_message("", str(key), sorted(valid)))
    report(type_problem("", cfg, root_annotations()))


def target_sections(node: Any, prefix: str = "") -> Iterator[tuple[str, DictConfig, Callable[..., Any]]]:
    """``(key, section, what it builds)`` for every section that is handed to a constructor: those with a
    ``_target_`` (at any depth, lists included) and ``trainer`` (always a ``Trainer``'s arguments)."""
    if isinstance(node, DictConfig):
        if prefix == "trainer":
            yield prefix, node, resolve_target("lightning.pytorch.Trainer")
        elif "_target_" in node:
            yield prefix, node, resolve_target(str(node._target_))
        children = node.items()
    elif isinstance(node, ListConfig):
        children = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for key, value in children:
        if key != "logger" or prefix:  # logger: W&B settings, checked by check_logger
            yield from target_sections(value, f"{prefix}.{key}" if prefix else str(key))


def resolve_target(path: str) -> Callable[..., Any]:
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"_target_ '{path}' cannot be imported ({type(err).__name__}: {err})") from None


def accepted_keys(target: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments ``target`` accepts; None when it takes ``**kwargs`` that cannot be traced."""
    keys: set[str] = set()
    chain = [c for c in target.__mro__ if "__init__" in vars(c)] if isinstance(target, type) else [target]
    for owner in chain:
        function = owner.__init__ if isinstance(target, type) else owner
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        keys |= {
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return keys
        if getattr(owner, "__module__", "").split(".")[0] in _CLOSED_MODULES:
            # torch.nn.Module / LightningModule accept no extra keys; a library's other **kwargs go
            # elsewhere (DDPStrategy's to DistributedDataParallel): not traceable here
            return keys if isinstance(owner, type) and issubclass(owner, torch.nn.Module) else None
    return None


def check_keys(section: str, given: list[str], valid: set[str] | None) -> None:
    if valid is None:
        return
    for key in given:
        if key not in valid and key not in HYDRA_KEYS:
            raise ConfigError(unknown_key_message(section, key, sorted(valid)))


def check_arguments_hook(section: str, node: DictConfig, target: Callable[..., Any]) -> None:
    """The values of a ``_target_`` section, when the target has a ``check_arguments`` hook."""
    check_arguments = getattr(target, "check_arguments", None)
    if "_target_" in node and callable(check_arguments):
        values = OmegaConf.to_container(node, resolve=True)
        try:
            check_arguments(**{k: v for k, v in values.items() if k not in HYDRA_KEYS})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{section}: {err}") from None


def check_module_lm_users(cfg: DictConfig) -> None:
    """A callback told to read with the module's frozen LM (``use_module_lm: true``) needs one, unsharded."""
    model = cfg.get("model")
    has_lm = isinstance(model, DictConfig) and model.get("frozen_lm") is not None
    strategy = (cfg.get("trainer") or {}).get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else strategy
    for name, spec in (cfg.get("callbacks") or {}).items():
        if not (isinstance(spec, DictConfig) and spec.get("use_module_lm")):
            continue
        if not has_lm:
            raise ConfigError(
                f"callbacks.{name}.use_module_lm=true, but model.frozen_lm is null (this method has no frozen "
                f"LM): set callbacks.{name}.use_module_lm=false to read with callbacks.{name}.lm"
            )
        if "fsdp" in str(target).lower():
            raise ConfigError(
                f"callbacks.{name}.use_module_lm=true cannot read with the FSDP-sharded frozen LM "
                f"(trainer.strategy={target}): set callbacks.{name}.use_module_lm=false"
            )


def check_logger(logger: Any) -> None:
    from experiments.loggers import wandb_logger

    check_keys("logger", [str(k) for k in logger.keys()], {"wandb"})
    if logger.get("wandb"):
        check_keys(
            "logger.wandb",
            [str(k) for k in logger.wandb.keys()],
            (accepted_keys(wandb_logger) or set()) - {"save_dir", "run_id"},
        )
        report(type_problem("logger.wandb", logger.wandb, parameter_annotations(wandb_logger)))


def check_method_sections(model: DictConfig) -> None:
    """The model blocks every :class:`RetrieverModule` builds itself: embedder, frozen_lm, scheduler."""
    from lightning_modules.base import NO_SCHEDULE, RetrieverModule
    from lightning_modules.models.embedder import Embedder
    from lightning_modules.models.frozen_lm import FrozenCausalLM

    target = resolve_target(str(model.get("_target_", "")))
    if not (isinstance(target, type) and issubclass(target, RetrieverModule)):
        return
    for key, builds in (("embedder", Embedder), ("frozen_lm", FrozenCausalLM)):
        if isinstance(model.get(key), DictConfig):
            check_keys(f"model.{key}", [str(k) for k in model[key].keys()], accepted_keys(builds))
            report(type_problem(f"model.{key}", model[key], parameter_annotations(builds)))
    if isinstance(model.get("scheduler"), DictConfig):
        check_keys("model.scheduler", [str(k) for k in model.scheduler.keys()], set(NO_SCHEDULE))


def check_data_source(data: Any) -> None:
    if (
        isinstance(data, DictConfig)
        and "path" in data
        and data.get("path") is None
        and not data.get("hub_name")
        and not data.get("hub_sources")
    ):
        raise ConfigError(
            "data.path is not set: point it at a BEIR folder (corpus.jsonl, queries.jsonl, "
            "qrels/<split>.tsv), e.g. data.path=/data/scifact, or set data.hub_name / data.hub_sources"
        )


def check_hardware(trainer: DictConfig) -> None:
    """The trainer's accelerator, strategy, devices and precision against this machine.

    Delegates to :func:`experiments.trainer_checks.check_trainer_options` (the multi-device trainer configs
    run the same check when the Trainer is built), so every trainer config, ``trainer=cpu`` included,
    is checked before any model is loaded; adds DeepSpeed, which needs GPUs as well.
    """
    from experiments.trainer_checks import CPU_CAPABLE_FSDP, TrainerConfigError, check_trainer_options

    strategy = trainer.get("strategy", "auto")
    if isinstance(
        strategy, DictConfig
    ):  # a strategy object from its _target_ (e.g. the project's FSDP strategy)
        target = str(strategy.get("_target_", "auto")).rsplit(".", 1)[-1].lower()
        if target == "retrieverfsdpstrategy":
            strategy = CPU_CAPABLE_FSDP
        else:
            strategy = "fsdp" if "fsdp" in target else target.removesuffix("strategy")
    strategy = str(strategy)
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if "deepspeed" in strategy.lower() and (accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError(
            f"trainer.strategy={strategy} needs CUDA GPUs, but the run is on CPU "
            f"(trainer.accelerator={accelerator}, CUDA available: {torch.cuda.is_available()}). "
            "Use trainer=cpu (one process) or trainer=ddp_cpu."
        )
    try:
        check_trainer_options(
            accelerator=accelerator,
            devices=trainer.get("devices", "auto"),
            strategy=strategy,
            precision=str(trainer.get("precision", "32-true")),
        )
    except TrainerConfigError as err:
        raise ConfigError(str(err)) from None


# ---- model files ----------------------------------------------------------------------------------------------
def model_references(node: Any, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(key, name_or_path, parent node)`` for every ``name_or_path`` in the config."""
    if isinstance(node, DictConfig):
        for key, value in node.items():
            where = f"{prefix}{key}"
            if key == "name_or_path" and isinstance(value, str):
                yield where, value, node
            else:
                yield from model_references(value, where + ".")


def check_model_files(cfg: DictConfig, offline: bool = True) -> None:
    """Every ``name_or_path`` of the model and of the callbacks (e.g. ``callbacks.rag.lm``), and every
    stage's base model; a stage's output is skipped (it is built before the model loads)."""
    from experiments.stage_runner import is_planned_output, stage_model_references

    references = [
        *model_references(cfg.get("model"), "model."),
        *model_references(cfg.get("callbacks"), "callbacks."),
        *stage_model_references(cfg),
    ]
    for key, name, parent in references:
        if is_planned_output(name):
            continue
        problem = model_problem(name, gguf_file=parent.get("gguf_file"), offline=offline)
        if problem:
            raise ConfigError(f"{key}='{name}': {problem}")


def model_problem(name: str, gguf_file: str | None = None, offline: bool = True) -> str | None:
    """Why ``name`` cannot be loaded offline, or None when it can (as far as a cheap check can tell)."""
    if name in MODEL_ALIASES or name.startswith("tiny-"):
        return None
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            return "model folder not found"
        if gguf_file is not None:
            return (
                None if (path / gguf_file).is_file() else f"GGUF file '{gguf_file}' not found in the folder"
            )
        if not (path / "config.json").is_file():
            return "the folder has no config.json (not a Hugging Face model folder)"
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
            return f"the folder has no weights file ({', '.join(WEIGHT_FILES)})"
        return None
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return (
                "not a registry alias ("
                + ", ".join(sorted(MODEL_ALIASES))
                + ", tiny-*), not a local folder, "
                "and not in the Hugging Face cache; hub downloads are off (offline: true / HF_HUB_OFFLINE=1). "
                "Point it at a local model folder or use an alias."
            )
    return None
