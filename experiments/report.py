"""Collect every run into one comparison table and plots, led by the paper-claims table (``make report``).

Reads every run and evaluation under ``--output-root`` (one or more folders; default ``runs``, or
``$LSR_OUTPUT_ROOT``) through ``experiments/report_collect.py``, and with ``--claims`` (default
``lab_results/claims.yaml`` when it exists) the result files that claims map lists and the claims of
``experiments/lab_claims.yaml`` (``experiments/claims.py``).

Datasets: the training-time evaluation set (``<data>-<split>``, e.g. ``hotpotqa-dev``) and each MTEB task
(``mteb/<task>``; documents as ``title text``, mteb's convention, so the two can differ slightly).
Rows: each starting embedder before training (from the runs' "before" scores), each baseline model, the
rag reference rows (no retrieval / BM25 / oracle, once per setting), and each run's final (last-step)
score: the lab reports the last checkpoint, never the best on dev.
Writes into ``--out`` (default ``<root>/report``): ``report.md`` (the claims table, then one table per
dataset: rows × metrics, Δ over the run's own start, rag columns where measured), ``report.csv`` (long
format), ``claims.csv``, ``metric_vs_step.png`` (nDCG@10 and rag/answer_nll vs training step, one panel per
metric and dataset, one line per run) and ``final_scores.png`` (final nDCG@10 as bars).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.claims import claim_verdicts, claims_markdown, write_claims_csv
from experiments.cli import ArgumentParser, UsageError, run_command
from experiments.report_collect import collect_run, merge_rows, raw_rows
from experiments.report_plots import plot_bars, plot_curves
from experiments.report_rows import read_json
from experiments.report_tables import markdown_table, write_csv


def build_report(
    output_root: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    claims_map: str | Path | None = None,
) -> dict[str, Path]:
    """Collect the runs under ``output_root`` (one folder or several) and the result files a claims map
    lists, and write the claims table (with a map), the results table, CSVs and plots."""
    roots = [Path(output_root)] if isinstance(output_root, str | Path) else [Path(r) for r in output_root]
    if not roots:
        raise UsageError("no output root given")
    out = Path(out) if out else roots[0] / "report"
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"output root {root} does not exist (set --output-root or LSR_OUTPUT_ROOT)")
    verdicts, mapped = claim_verdicts(Path(claims_map)) if claims_map else ([], [])
    groups = [raw_rows(root, exclude=out) for root in roots]
    groups.append([r for file in mapped if "metrics" in read_json(file) for r in collect_run(file) if r])
    rows = merge_rows(groups)
    if not rows:
        names = ", ".join(str(r) for r in roots)
        raise UsageError(f"no results.json or eval/*/mteb_results.json under {names}: nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out / "report.md",
        "csv": out / "report.csv",
        "curves": out / "metric_vs_step.png",
        "bars": out / "final_scores.png",
    }
    claims = claims_markdown(verdicts, Path(claims_map)) if claims_map else ""
    if claims_map:
        paths["claims_csv"] = out / "claims.csv"
        write_claims_csv(verdicts, paths["claims_csv"])
    plots = (
        f"\n![nDCG@10 and rag/answer_nll vs step]({paths['curves'].name})\n\n"
        f"![final nDCG@10]({paths['bars'].name})\n"
    )
    paths["table"].write_text(claims + markdown_table(rows) + plots)
    write_csv(rows, paths["csv"])
    plot_curves(rows, paths["curves"])
    plot_bars(rows, paths["bars"])
    return paths


DEFAULT_CLAIMS_MAP = Path("lab_results/claims.yaml")


def report(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output-root",
        nargs="+",
        default=[os.environ.get("LSR_OUTPUT_ROOT", "runs")],
        help="one or more folders holding run directories (default: runs or $LSR_OUTPUT_ROOT)",
    )
    parser.add_argument("--out", default=None, help="report folder (default: <output root>/report)")
    parser.add_argument(
        "--claims",
        default=str(DEFAULT_CLAIMS_MAP) if DEFAULT_CLAIMS_MAP.is_file() else None,
        help="claims map (claim → role → result file) for the claims table "
        f"(default: {DEFAULT_CLAIMS_MAP} when it exists; 'none' for no claims table)",
    )
    args = parser.parse_args(argv)
    claims = None if args.claims in (None, "none") else args.claims
    paths = build_report(args.output_root, args.out, claims)
    print(paths["table"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def main(argv: list[str] | None = None) -> int:
    return run_command(report, argv)


if __name__ == "__main__":
    sys.exit(main())
