"""One command-line convention for every entry point (``experiments.train``, ``evaluate``, ``decode``,
``report``, ``sweep``, ``llm_embedder_prescore``, ``llm_embedder_agreement``, ``rabtriever_sft``).

- A mistake in the input (a config key, a value of the wrong type, a data file, a model that is not there,
  a command-line argument) prints **one** ``error: ...`` line on stderr naming the file:line:field or the
  key, and exits with status 2. ``--debug`` (anywhere on the command line) or ``LSR_DEBUG=1`` shows the
  traceback instead. Anything else is a bug and keeps its traceback.
- An interrupted run (Ctrl-C, ``kill``) exits with 128 + the signal number after saying how to resume.
- :func:`go_offline` sets ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` before anything imports
  ``huggingface_hub`` (it reads them once, at import; transformers, datasets, mteb and lightning import it),
  so entry points import the model stack only after calling it.

See docs/reliability.md for every case and its test.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"

# The exceptions that mean "the input is wrong", by defining module. Only modules already imported are
# looked at: an exception of a class whose module was never imported cannot have been raised.
USER_ERRORS: dict[str, tuple[str, ...]] = {
    "experiments.cli": ("UsageError",),
    "experiments.config_check": ("ConfigError",),
    "experiments.run_dir": ("ConfigMismatchError",),
    "experiments.trainer_checks": ("TrainerConfigError",),
    "experiments.sweep": ("SweepConfigError",),
    "datamodules.errors": ("DataFormatError", "MTEBTaskUnavailableError"),
    "lightning_modules.models.registry": ("ModelNotFoundError",),
    "lightning_modules.base": ("NonFiniteLossError",),
    "lightning_modules.settings": ("SettingsError",),  # its message names the model.* key
}


class UsageError(ValueError):
    """A command-line argument or input path the tool cannot use; the message says what to pass instead."""


class RunInterrupted(Exception):  # noqa: N818 - an outcome, not a failure
    """A run stopped by a signal after saving what it needs to continue; the message says how."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose mistakes follow the convention (one ``error:`` line, exit 2) and that accepts
    ``--debug`` on every tool."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help="show tracebacks (also: LSR_DEBUG=1)")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def go_offline(offline: bool = True) -> None:
    """Hub downloads off (unless the environment sets ``HF_HUB_OFFLINE=0``), before the hub libraries load.

    Raises ``RuntimeError`` when ``huggingface_hub`` was already imported with the other setting: that is
    an entry point importing the model stack too early, and the setting would silently not apply.
    """
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    hub = sys.modules.get("huggingface_hub.constants")
    wanted = os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    if hub is not None and bool(hub.HF_HUB_OFFLINE) != wanted:
        raise RuntimeError(
            f"huggingface_hub was imported before the offline setting (HF_HUB_OFFLINE={int(wanted)}) was made"
        )


def prepare_process(offline: bool, threads: int | None) -> None:
    """The process-wide settings of a run: offline hub access (first) and torch's thread count."""
    go_offline(offline)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def user_error_types() -> tuple[type[BaseException], ...]:
    found = []
    for module_name, names in USER_ERRORS.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, name) for name in names if module is not None and hasattr(module, name)]
    return tuple(found)


def user_error_message(error: BaseException) -> str | None:
    """The one-line report of a user error, or None for anything else (a bug: keep its traceback).

    A config section whose constructor refuses a value (Hydra's ``InstantiationException`` around a
    ``ValueError``/``TypeError``) is a user error too: Hydra names the section (``full_key``).
    """
    if isinstance(error, user_error_types()):
        return str(error)
    cause = error.__cause__
    if type(error).__name__ == "InstantiationException" and isinstance(cause, ValueError | TypeError):
        nested = user_error_message(cause)
        settings = sys.modules.get("lightning_modules.settings")
        if settings is not None and isinstance(cause, settings.SettingsError):
            return nested  # already names the full key (model.heads.selection ...)
        key = getattr(error, "full_key", None) or "config"
        return f"{key}: {nested if nested is not None else cause}"
    return None


def split_debug_flag(arguments: list[str]) -> tuple[list[str], bool]:
    """``arguments`` without ``--debug``, and whether tracebacks were asked for (flag or ``LSR_DEBUG=1``)."""
    debug = DEBUG_FLAG in arguments or os.environ.get("LSR_DEBUG", "") not in ("", "0")
    return [a for a in arguments if a != DEBUG_FLAG], debug


def run_command(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> int:
    """Run ``main(arguments)`` under the convention; return the exit status: ``main``'s when it returns an
    int (a tool that runs a subprocess), else 0; 2 for a user error; 128 + the signal when interrupted."""
    arguments, debug = split_debug_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        status = main(arguments)
    except RunInterrupted as stop:
        print(str(stop), file=sys.stderr, flush=True)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted before training started: nothing to resume", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    except Exception as error:  # noqa: BLE001 - classified below; bugs are re-raised
        message = user_error_message(error)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
