"""Config values of the wrong type are refused before anything is built, naming the key, the expected type
and the value: ``config key 'trainer.max_steps' expects int, got 'abc' (str)``.

The expected types are the annotations of what each section is handed to: a section with a ``_target_``
against that constructor's parameters (following ``**kwargs`` up the class hierarchy), ``trainer`` against
``lightning.pytorch.Trainer``, a method's ``embedder`` / ``frozen_lm`` blocks against
:class:`Embedder` / :class:`FrozenCausalLM`, and the root keys against :class:`RootSettings`. Only what
an annotation decides is judged: a value for a parameter annotated with a class (a strategy object, a
tensor) or not annotated at all passes here and is checked where it is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf

PRIMITIVES = (bool, int, float, str, type(None))
SEQUENCES = (list, tuple, Sequence, Iterable)
MAPPINGS = (dict, Mapping)
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


@dataclasses.dataclass(frozen=True)
class RootSettings:
    """The types of the root keys of ``experiments/config.yaml`` (their values are stated there)."""

    name: str
    seed: int
    output_root: str
    tiny_models: bool
    offline: bool
    threads: int | None
    resume: bool | str  # or the run directory to continue (resume=<run dir>)
    eval_before_training: bool
    meta: dict
    stages: dict


def matches(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` fits ``annotation``: True, False, or None when the annotation cannot tell. ``null``
    is not judged (configs write it for "not set"; the constructor decides what that means)."""
    if value is None:
        return None
    origin = get_origin(annotation)
    if annotation in (Any, inspect.Parameter.empty) or isinstance(annotation, str | typing.TypeVar):
        return None
    if origin in (Union, types.UnionType):
        verdicts = [matches(value, member) for member in get_args(annotation)]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is Literal:
        return value in get_args(annotation)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in PRIMITIVES:
        return isinstance(value, annotation)
    if origin in SEQUENCES or annotation in SEQUENCES:
        return isinstance(value, list | tuple)
    if origin in MAPPINGS or annotation in MAPPINGS:
        return isinstance(value, dict)
    if isinstance(annotation, type) and isinstance(value, PRIMITIVES):
        return isinstance(value, annotation) or (
            isinstance(value, str) and issubclass(annotation, os.PathLike)
        )
    return None


def describe(annotation: Any) -> str:
    """``int``, ``float | None``, ``one of 'raise', 'skip'``: the expected type in words."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(describe(member) for member in get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def parameter_annotations(target: Callable[..., Any]) -> dict[str, Any]:
    """The annotated parameters ``target`` accepts, following ``**kwargs`` up a class hierarchy."""
    owners = (
        [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
        if isinstance(target, type)
        else [target]
    )
    annotations: dict[str, Any] = {}
    for function in owners:
        try:
            parameters = inspect.signature(function, eval_str=True).parameters.values()
        except Exception:  # an annotation naming something not importable at run time: leave it unchecked
            return annotations
        for parameter in parameters:
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                annotations.setdefault(parameter.name, parameter.annotation)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return annotations


def plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def type_problem(section: str, node: DictConfig, annotations: Mapping[str, Any]) -> str | None:
    """The first value under ``node`` its annotation rules out, in words; None when all fit."""
    for key in node:
        if key in HYDRA_KEYS or key not in annotations:
            continue
        value = node[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            continue  # an object built from its own section (checked on its own)
        value = plain(value)
        if matches(value, annotations[key]) is False:
            where = f"{section}.{key}" if section else str(key)
            return (
                f"config key '{where}' expects {describe(annotations[key])}, "
                f"got {value!r} ({type(value).__name__})"
            )
    return None


def root_annotations() -> dict[str, Any]:
    return typing.get_type_hints(RootSettings)
