"""W&B sweeps whose trials are ordinary training runs with Hydra overrides on the command line.

- ``python -m experiments.sweep check SWEEP``   validate ``experiments/sweeps/<SWEEP>.yaml`` offline;
- ``python -m experiments.sweep create SWEEP``  validate, then create the sweep (``make sweep``) and
  print its id;
- ``python -m experiments.sweep agent ID``      run ``wandb agent`` (``make agent``); W&B starts each trial
  with the sweep file's ``command``: ``python -m experiments.sweep trial key=value ...``;
- ``python -m experiments.sweep trial k=v ...`` run ``python -m experiments.train k=v ...`` (prefixed by
  ``$LSR_TRIAL_LAUNCHER``, e.g. ``srun`` in ``slurm/agent.sbatch``, plus ``$LSR_TRIAL_OVERRIDES``).

The parameters reach every DDP rank as command-line overrides (Lightning relaunches that same command
line for the other ranks; ``srun`` starts every rank with it), never through ``wandb.config``, so all
ranks compose the same config. A trial always logs to W&B (``logger=wandb`` is added to its command
line) into the agent's run (``WANDB_RUN_ID``, see ``experiments/loggers.py``), so the sweep sees the
metric, which must be a key the training logs (``val/ndcg@10``, ...).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from experiments import CONFIG_DIR
from experiments.cli import ArgumentParser, UsageError, run_command
from retrieval.metrics import DEFAULT_CUTOFFS

SWEEP_DIR = CONFIG_DIR / "sweeps"
LOGGED_METRICS = {f"val/{name}@{k}" for name, cutoffs in DEFAULT_CUTOFFS.items() for k in cutoffs} | {
    "train/loss"
}
REQUIRED_COMMAND_TOKENS = ("experiments.sweep", "trial", "${args_no_hyphens}")
TRIAL_LOGGER = "wandb"  # the sweep reads a trial's metric from its W&B run


class SweepConfigError(ValueError):
    def __init__(self, path: Path, message: str):
        super().__init__(f"{path}: {message}")


def sweep_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = SWEEP_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        available = ", ".join(sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
        raise UsageError(f"no sweep '{name_or_path}' (looked for {candidate}; available: {available})")
    return candidate


def candidate_values(spec: dict[str, Any]) -> list[Any]:
    """The values of one W&B parameter spec worth composing: ``value``, every ``values``, or ``min``/``max``."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    return []


def override(key: str, value: Any) -> str:
    """``key=value`` as W&B's ``${args_no_hyphens}`` writes it (Python ``str`` of the value)."""
    return f"{key}={value}"


def load_sweep(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise SweepConfigError(path, "expected a mapping (a W&B sweep configuration)")
    for key in ("method", "metric", "parameters", "command"):
        if key not in config:
            raise SweepConfigError(path, f"missing key '{key}'")
    return config


def validate_sweep(path: Path) -> dict[str, Any]:
    """Check a sweep file: logged metric, trial command, and every parameter value composes with Hydra.

    Each parameter is composed with each of its candidate values on top of the sweep's ``exp``; a key that does not exist in the config, or a bad value, raises with the
    parameter's name. Returns the parsed sweep configuration.
    """
    config = load_sweep(path)
    metric = (config.get("metric") or {}).get("name")
    if metric not in LOGGED_METRICS:
        raise SweepConfigError(
            path, f"metric.name '{metric}' is not a logged key (logged: {', '.join(sorted(LOGGED_METRICS))})"
        )
    command = [str(token) for token in config["command"]]
    missing = [token for token in REQUIRED_COMMAND_TOKENS if token not in command]
    if missing:
        raise SweepConfigError(
            path, f"command must run `experiments.sweep trial ${{args_no_hyphens}}`; missing {missing}"
        )
    parameters: dict[str, dict[str, Any]] = config["parameters"]
    values = {key: candidate_values(spec) for key, spec in parameters.items()}
    for key, options in values.items():
        if not options:
            raise SweepConfigError(path, f"parameter '{key}' has no value, values or min/max to check")
    if any(value != TRIAL_LOGGER for value in values.get("logger", [])):
        raise SweepConfigError(
            path, f"parameter 'logger' must stay {TRIAL_LOGGER}: the sweep reads each trial's metric from W&B"
        )
    experiments = values.get("exp", [None])
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for key, options in values.items():
            for value in options:
                chosen = {"exp": experiments[0], key: value} if experiments[0] is not None else {key: value}
                overrides = [override(k, v) for k, v in chosen.items()]
                try:
                    cfg = compose("config", overrides=overrides)
                except (HydraException, OmegaConfBaseException) as error:
                    raise SweepConfigError(
                        path, f"parameter '{key}={value}' is not accepted by the config: {error}"
                    ) from None
                if cfg.get("name") in (None, "???"):
                    raise SweepConfigError(
                        path, "no experiment selected: add a parameter `exp: {value: <name>}`"
                    )
    return config


def create(name_or_path: str, project: str | None, entity: str | None) -> str:
    import wandb

    path = sweep_path(name_or_path)
    config = validate_sweep(path)
    project = project or config.get("project") or "llm-supervised-retrievers"
    sweep_id = wandb.sweep(sweep=config, project=project, entity=entity)
    full = f"{entity}/{project}/{sweep_id}" if entity else f"{project}/{sweep_id}"
    print(
        f"created sweep {full}\n  run agents: make agent SWEEP_ID={full}   (or make slurm-agent SWEEP_ID={full} ...)"
    )
    return full


def agent(sweep_id: str, count: int | None) -> int:
    command = [sys.executable, "-m", "wandb", "agent", *(["--count", str(count)] if count else []), sweep_id]
    return subprocess.call(command, cwd=CONFIG_DIR.parent)


def trial_command(overrides: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """The command a trial runs: launcher + ``python -m experiments.train`` + ``logger=wandb`` (unless an
    override chooses the logger) + trial and site overrides."""
    environ = os.environ if environ is None else environ
    launcher = shlex.split(environ.get("LSR_TRIAL_LAUNCHER", ""))
    site = shlex.split(environ.get("LSR_TRIAL_OVERRIDES", ""))
    chosen = any(o.lstrip("+~").split("=", 1)[0] == "logger" for o in [*overrides, *site])
    logger = [] if chosen else [f"logger={TRIAL_LOGGER}"]
    return [*launcher, sys.executable, "-m", "experiments.train", *logger, *overrides, *site]


def parser() -> ArgumentParser:
    root = ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    check_parser = sub.add_parser("check", help="validate a sweep file offline")
    check_parser.add_argument("sweep")
    create_parser = sub.add_parser("create", help="validate and create a W&B sweep; prints its id")
    create_parser.add_argument("sweep")
    create_parser.add_argument("--project", default=None)
    create_parser.add_argument("--entity", default=None)
    agent_parser = sub.add_parser("agent", help="run a W&B agent for a sweep id")
    agent_parser.add_argument("sweep_id")
    agent_parser.add_argument("--count", type=int, default=None)
    trial_parser = sub.add_parser("trial", help="run one trial (called by the W&B agent)")
    trial_parser.add_argument("overrides", nargs="*")
    return root


def sweep_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        path = sweep_path(args.sweep)
        config = validate_sweep(path)
        print(
            f"{path}: {len(config['parameters'])} parameters accepted by the config; metric {config['metric']['name']}"
        )
        return 0
    if args.command == "create":
        create(args.sweep, args.project, args.entity)
        return 0
    if args.command == "agent":
        return agent(args.sweep_id, args.count)
    command = trial_command(args.overrides)
    print("trial:", shlex.join(command), flush=True)
    return subprocess.call(command, cwd=CONFIG_DIR.parent)


def main(argv: list[str] | None = None) -> int:
    """Mistakes in a sweep file or the arguments: one ``error:`` line, exit 2 (``experiments/cli.py``)."""
    return run_command(sweep_command, argv)


if __name__ == "__main__":
    sys.exit(main())
