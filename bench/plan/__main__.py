"""``make plan EXP=<exp> [GPUS=8] [TRAINER=ddp|fsdp] [ARGS="key=value ..."]``: the per-GPU memory plan of
one training step of a recipe, counted on the ``meta`` device (no GPU, no download; docs/scale.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.plan.recipe import plan_recipe, table
from experiments.config_check import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__)
    parser.add_argument("experiment")
    parser.add_argument(
        "--gpus", type=int, default=None, help="default: the recipe's trainer.devices (auto: 8)"
    )
    parser.add_argument("--trainer", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--write", action="store_true", help="also write bench/results/plan_<exp>.json")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    try:
        result = plan_recipe(args.experiment, args.gpus, args.trainer, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(result))
    if args.write:
        path = RESULTS / f"plan_{args.experiment}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
