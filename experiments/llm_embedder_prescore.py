"""Compute (or confirm cached) teacher scores for an experiment's training data, without training.

``python -m experiments.llm_embedder_prescore exp=llm_embedder_tiny [overrides] [--debug]`` (``make
llm-embedder-score``) loads only the data and the frozen LM, scores every candidate of every task that
distils, prints the seconds and how many scores were already cached, and exits. Training runs of the same
experiment (or any experiment with the same LM, template, reward and texts) then read the cache.
Mistakes print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import json
import sys
import time

from experiments.cli import prepare_process, run_command
from experiments.config_check import ConfigError, check_config, compose_checked


def prescore(overrides: list[str]) -> dict:
    cfg = compose_checked(overrides)
    prepare_process(bool(cfg.offline), cfg.threads)  # before the imports below load huggingface_hub
    check_config(cfg)
    if cfg.model.get("frozen_lm") is None:
        raise ConfigError("this experiment has no frozen LM (model.frozen_lm is null): nothing to score")
    from hydra.utils import instantiate

    from lightning_modules.llm_embedder.teacher import ScoringItem, TeacherScorer
    from lightning_modules.llm_embedder.templates import task_settings
    from lightning_modules.models.frozen_lm import FrozenCausalLM

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    start = time.perf_counter()
    lm = FrozenCausalLM(**cfg.model.frozen_lm)
    scorer = TeacherScorer(lm, **dict(cfg.model.teacher))
    settings = task_settings(dict(cfg.model.get("tasks") or {}))
    report = {"reward": scorer.reward, "lm_load_seconds": round(time.perf_counter() - start, 2), "tasks": {}}
    for name, examples in datamodule.examples.items():
        task = examples[0].task  # the task family of this data set
        if task not in settings or not settings[task].uses_teacher:
            continue
        items = [ScoringItem(c, e.query, e.answer) for e in examples for c in e.candidates]
        _, part = scorer.score(settings[task].template, items)
        report["tasks"][name] = {
            "task": task,
            "queries": len(examples),
            "items": part.items,
            "cached_before": part.cached,
            "scored": part.scored,
            "seconds": round(part.seconds, 2),
            "cache_dir": str(scorer.cache(settings[task].template).directory),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda overrides: print(json.dumps(prescore(overrides), indent=2)), argv)


if __name__ == "__main__":
    sys.exit(main())
