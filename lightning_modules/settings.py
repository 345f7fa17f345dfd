"""Module settings as frozen dataclasses: ``Literal`` fields are checked against their choices, every
error names the config key (``model.candidates must be one of dataset, in_batch, mined; got 'x'``).

A method's LightningModule takes its settings as keyword arguments (the Hydra config passes the same
keys as ever) and builds its :class:`Settings` subclass with :meth:`Settings.take`, which also refuses a
key that is neither a setting nor an argument of :class:`~lightning_modules.base.RetrieverModule`.
Nested settings (``model.heads``, ``model.teacher``) are dataclasses too, built from their dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal


class SettingsError(ValueError):
    """A setting with a wrong value or an unknown key; the message names the config key."""


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` annotation (``None`` added for ``Literal[...] | None``)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        for arg in args:
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg) + ((None,) if type(None) in args else ())
    return None


def nested_settings_class(annotation: Any) -> type[Settings] | None:
    """The :class:`Settings` subclass a field holds (``HeadSettings`` for ``heads: HeadSettings``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, Settings):
        return annotation
    return None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass. Subclasses set ``config_key`` (e.g. ``"model"``, ``"model.heads"``)
    and may override :meth:`check` for conditions across fields."""

    config_key: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            nested = nested_settings_class(hints[field.name])
            if nested is not None and not isinstance(value, nested):  # a dict from the config
                object.__setattr__(self, field.name, nested.from_dict(value))
                continue
            choices = literal_choices(hints[field.name])
            if choices is not None and value not in choices:
                listed = ", ".join(str(c) for c in choices)
                raise SettingsError(f"{self.config_key}.{field.name} must be one of {listed}; got {value!r}")
        self.check()

    def check(self) -> None:
        """Conditions across fields (raise :class:`SettingsError` naming the key)."""

    @classmethod
    def keys(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Settings:
        """Build from a config dict, naming an unknown key and the closest valid one."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise SettingsError(unknown_key_message(cls.config_key, unknown[0], cls.keys()))
        return cls(**values)

    @classmethod
    def take(cls, kwargs: dict[str, Any], passes_on: Callable[..., Any]) -> tuple[Settings, dict[str, Any]]:
        """Split a module's keyword arguments into these settings and the arguments of ``passes_on`` (the
        base class ``__init__``); a key belonging to neither is refused with the valid keys."""
        others = {
            name
            for name, p in inspect.signature(passes_on).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self"
        }
        unknown = sorted(set(kwargs) - set(cls.keys()) - others)
        if unknown:
            raise SettingsError(unknown_key_message(cls.config_key, unknown[0], [*cls.keys(), *others]))
        mine = {k: v for k, v in kwargs.items() if k in cls.keys()}
        return cls(**mine), {k: v for k, v in kwargs.items() if k not in mine}


def unknown_key_message(section: str, key: str, valid: list[str]) -> str:
    hint = difflib.get_close_matches(key, valid, n=1)
    return (
        f"unknown config key '{section}.{key}'."
        + (f" Did you mean '{hint[0]}'?" if hint else "")
        + f" Valid keys under '{section}': {', '.join(sorted(valid))}"
    )


def settings_arguments(settings_class: type[Settings]) -> type:
    """A mixin class whose ``__init__`` passes every argument on unchanged but whose signature lists the
    fields of ``settings_class`` as keyword arguments.

    A module declared as ``class DreamModule(settings_arguments(DreamSettings), RetrieverModule)`` takes its
    settings as ``**kwargs`` (one source of truth: the dataclass), yet signature-based tools (the config
    check walking ``__init__`` signatures along the MRO, IDEs) still see each valid key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super(mixin, self).__init__(*args, **kwargs)

    keyword = inspect.Parameter.KEYWORD_ONLY
    fields = [
        inspect.Parameter(f.name, keyword, default=None if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(settings_class)
    ]
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *fields,
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )
    mixin = type(f"{settings_class.__name__}Arguments", (), {"__init__": __init__, "__module__": __name__})
    return mixin
