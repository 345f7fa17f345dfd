"""Train one experiment: ``python -m experiments.train exp=<name> [key=value ...] [--debug]`` (``make train``).

Three steps, each in its own module:

1. :func:`~experiments.run_prepare.prepare_run`: compose and check the config (keys, types, hardware, model
   files), the run directory (``<output_root>/<name>/<hash of overrides>/<job id>``: a stored config must
   match; the newest loadable checkpoint is resumed) and the data (every file read and checked; a run that
   would train 0 steps is refused). Nothing is loaded or written yet.
2. :func:`~experiments.run_fit.fit_and_evaluate`: build the model, callbacks, loggers and trainer from the
   config, store ``config.yaml``, evaluate the untrained model, train, evaluate. Ctrl-C / SIGTERM finish
   the batch, write ``last.ckpt`` and print the command that resumes.
3. :func:`~experiments.run_results.write_results`: ``results.json``, the export's model card, the summary.

Mistakes in the input print one ``error:`` line and exit 2 (``experiments/cli.py``); docs/reliability.md
lists every fault and what the user sees.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from experiments.cli import run_command
from experiments.config_check import compose_checked
from experiments.run_prepare import prepare_run


def train(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Run the experiment ``cfg`` (composed from ``overrides``); return its results (``results.json``)."""
    run = prepare_run(cfg, overrides)  # sets the hub offline before anything imports huggingface_hub
    from experiments.run_fit import fit_and_evaluate
    from experiments.run_results import write_results

    outcome = fit_and_evaluate(run)
    return write_results(run, outcome)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.train key=value ...``: compose once, train; the exit status."""
    return run_command(lambda overrides: train(compose_checked(overrides), overrides), argv)


if __name__ == "__main__":
    sys.exit(main())
