"""Collect every run under the output root into one comparison table and plots (``make report``).

Reads every run and evaluation under ``--output-root`` (one or more folders; default ``runs``, or
``$LSR_OUTPUT_ROOT``) through ``experiments/report_collect.py``.

Datasets: the training-time evaluation set (``<data>-<split>``, e.g. ``hotpotqa-dev``) and each MTEB task
(``mteb/<task>``; documents as ``title text``, mteb's convention, so the two can differ slightly).
Rows: each starting embedder before training (from the runs' "before" scores), each baseline model,
and each run's final (last-step) score: the lab reports the last checkpoint, never the best on dev.
Writes into ``--out`` (default ``<root>/report``): ``report.md`` (one table per dataset: rows × metrics,
plus Δ nDCG@10 over the run's own start), ``report.csv`` (long format), ``metric_vs_step.png`` (nDCG@10
vs training step per method, one panel per dataset) and ``final_scores.png`` (final nDCG@10 as bars).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.cli import ArgumentParser, UsageError, run_command
from experiments.report_collect import (
    METRICS,
    PRIMARY,
    Row,
    collect,
    disambiguate,
    merge_start,
    references_of,
)


# ---- outputs -------------------------------------------------------------------------------------------
def datasets_of(rows: list[Row]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        seen += [d for d in row.scores if d not in seen]
    return seen


def start_score(rows: list[Row], row: Row, dataset: str) -> float | None:
    for other in rows:
        if other.kind == "start" and other.start == row.start and PRIMARY in other.scores.get(dataset, {}):
            return other.scores[dataset][PRIMARY]
    return None


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "# Results",
        "",
        "Final (last-step) scores; `start:` rows are the untrained embedders, `baseline:` rows "
        "models evaluated as they are. Δ is nDCG@10 minus the run's own start.",
        "",
    ]
    for dataset in datasets_of(rows):
        lines += [
            f"## {dataset}",
            "",
            "| row | label use | steps | s/step | " + " | ".join(METRICS) + " | Δ nDCG@10 |",
            "|---|---|---|---|" + "---|" * (len(METRICS) + 1),
        ]
        for row in rows:
            scores = row.scores.get(dataset)
            if not scores:
                continue
            base = start_score(rows, row, dataset) if row.kind == "run" else None
            delta = f"{scores[PRIMARY] - base:+.4f}" if base is not None and PRIMARY in scores else "–"
            sps = f"{row.seconds_per_step:.2f}" if row.seconds_per_step else "–"
            values = " | ".join(f"{scores[m]:.4f}" if m in scores else "–" for m in METRICS)
            lines.append(
                f"| {row.label} | {row.label_use} | {row.steps if row.steps is not None else '–'} | {sps} | {values} | {delta} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "kind", "method", "start", "label_use", "dataset", "metric", "value"])
        for row in rows:
            for dataset, scores in row.scores.items():
                for metric, value in scores.items():
                    writer.writerow(
                        [
                            row.label,
                            row.kind,
                            row.method,
                            row.start,
                            row.label_use,
                            dataset,
                            metric,
                            f"{value:.6f}",
                        ]
                    )


def plot_curves(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in datasets_of(rows) if any(d in r.curves for r in rows)]
    if not datasets:
        datasets = ["(no evaluation curves)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for row in rows:
            curve = sorted(row.curves.get(dataset, []))
            if curve:
                ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", label=row.label)
        for row in rows:
            if row.kind != "run" and PRIMARY in row.scores.get(dataset, {}):
                ax.axhline(row.scores[dataset][PRIMARY], linestyle="--", linewidth=1, color="grey")
                ax.annotate(
                    row.label, (0, row.scores[dataset][PRIMARY]), fontsize=7, color="grey", va="bottom"
                )
        ax.set_title(dataset)
        ax.set_xlabel("training step")
        ax.set_ylabel("nDCG@10")
        ax.grid(alpha=0.3)
        if ax.lines and any(not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = datasets_of(rows)
    labels = [r.label for r in rows]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * len(datasets) * len(rows) + 2), 5 + 0.18 * len(rows)))
    for i, row in enumerate(rows):
        xs = [j + i * width for j, d in enumerate(datasets) if PRIMARY in row.scores.get(d, {})]
        ys = [row.scores[d][PRIMARY] for d in datasets if PRIMARY in row.scores.get(d, {})]
        bars = ax.bar(xs, ys, width=width, label=labels[i])
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=10)
    ax.set_ylabel("nDCG@10 (final)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(
    output_root: str | Path | Sequence[str | Path], out: str | Path | None = None
) -> dict[str, Path]:
    """Collect the runs under ``output_root`` (one folder or several) and write the table, CSV and plots."""
    roots = [Path(output_root)] if isinstance(output_root, str | Path) else [Path(r) for r in output_root]
    if not roots:
        raise UsageError("no output root given")
    out = Path(out) if out else roots[0] / "report"
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"output root {root} does not exist (set --output-root or LSR_OUTPUT_ROOT)")
    rows = merge_rows([collect(root, exclude=out) for root in roots])
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
    text = (
        markdown_table(rows)
        + f"\n![nDCG@10 vs step]({paths['curves'].name})\n\n![final nDCG@10]({paths['bars'].name})\n"
    )
    paths["table"].write_text(text)
    write_csv(rows, paths["csv"])
    plot_curves(rows, paths["curves"])
    plot_bars(rows, paths["bars"])
    return paths


def merge_rows(groups: list[list[Row]]) -> list[Row]:
    """Rows of several output roots in one order: starts, baselines, then runs (contrastive first)."""
    starts: list[Row] = []
    for row in (r for group in groups for r in group if r.kind == "start"):
        merge_start(starts, row)
    baselines = [r for group in groups for r in group if r.kind == "baseline"]
    runs = [r for group in groups for r in group if r.kind == "run"]
    disambiguate(runs)
    runs.sort(key=lambda r: (r.method != "contrastive", r.label))
    return starts + baselines + references_of(runs) + runs


def report(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output-root",
        nargs="+",
        default=[os.environ.get("LSR_OUTPUT_ROOT", "runs")],
        help="one or more folders holding run directories (default: runs or $LSR_OUTPUT_ROOT)",
    )
    parser.add_argument("--out", default=None, help="report folder (default: <output root>/report)")
    args = parser.parse_args(argv)
    paths = build_report(args.output_root, args.out)
    print(paths["table"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def main(argv: list[str] | None = None) -> int:
    return run_command(report, argv)


if __name__ == "__main__":
    sys.exit(main())
