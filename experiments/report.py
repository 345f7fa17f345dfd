"""Collect every run under the output root into one comparison table and plots (``make report``).

Reads, under ``--output-root`` (one or more folders; default ``runs``, or ``$LSR_OUTPUT_ROOT``):
- each run's ``results.json`` (method, start, label use, budget, dev metrics before/after training),
  its ``eval/step_*.json`` (training-time retrieval evaluation) and ``mteb/step_*.json`` (``MTEBCallback``),
  and ``mteb_eval/mteb_results.json`` (``make eval`` on the run);
- standalone ``make eval`` results of baseline models, ``<root>/eval/*/mteb_results.json``.

Datasets: the training-time evaluation set (``<data>-<split>``, e.g. ``hotpotqa-dev``) and each MTEB task
(``mteb/<task>``; documents as ``title text``, mteb's convention, so the two can differ slightly).
Rows: each starting embedder before training (from the runs' "before" scores), each baseline model,
and each run's final (last-step) score: the lab reports the last checkpoint, never the best on dev.
Writes into ``--out`` (default ``<root>/report``): ``report.md`` (one table per dataset: rows × metrics,
plus Δ nDCG@10 over the run's own start), ``report.csv`` (long format), ``metric_vs_step.png`` (nDCG@10
vs training step per method, one panel per dataset) and ``final_scores.png`` (final nDCG@10 as bars).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.run_dir import flatten as flatten_config
from experiments.run_dir import label_use_of

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
PRIMARY = "ndcg@10"
MTEB_NAMES = {
    "ndcg_at_10": "ndcg@10",
    "recall_at_10": "recall@10",
    "recall_at_100": "recall@100",
    "mrr_at_10": "mrr@10",
}


@dataclass
class Row:
    """One line of the comparison: a start embedder, a baseline model, or a trained run."""

    label: str
    kind: str  # "start" | "baseline" | "reference" | "run"
    method: str = ""
    start: str = ""
    label_use: str = ""
    steps: int | None = None
    seconds_per_step: float | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> metric -> value
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # dataset -> [(step, nDCG@10)]
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.yaml, flattened to dotted keys
    name: str = ""  # the label before disambiguation (method · experiment)
    references: list[Row] = field(default_factory=list)  # reference rows the run measured (e.g. rerankers)


# Config keys that change where or how fast a run goes, not what it computes: never part of a row label.
NON_SEMANTIC_KEYS = ("output_root", "threads", "trainer.enable_progress_bar", "logger")


def flatten(tree: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the run dir's flattening, without empty sub-trees)."""
    return {key: value for key, value in flatten_config(tree).items() if value != {}}


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values differ between the configs (a key missing from one counts as differing)."""
    keys = sorted(set().union(*configs)) if configs else []
    return [
        k
        for k in keys
        if not any(k == n or k.startswith(n + ".") for n in NON_SEMANTIC_KEYS)
        and len({repr(c.get(k, "<unset>")) for c in configs}) > 1
    ]


UNSET = object()


def config_difference(config: dict[str, Any], group: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Where ``config`` departs from the value most of its ``group`` has on ``keys`` (every value is shown
    when no value has a strict majority): ``key=value``, or
    ``~prefix`` when a whole sub-tree the others have is absent here (e.g. ``~data.tasks.tool``)."""
    parts: list[str] = []
    for key in keys:
        values = [repr(c.get(key, UNSET)) for c in group]
        mode = max(values, key=values.count)
        if repr(config.get(key, UNSET)) == mode and 2 * values.count(mode) > len(values):
            continue  # this run has the group's usual value (a strict majority has it)
        if key in config:
            parts.append(f"{key}={config[key]}")
            continue
        prefix = key
        while "." in prefix and not any(k.startswith(prefix.rsplit(".", 1)[0] + ".") for k in config):
            prefix = prefix.rsplit(".", 1)[0]
        parts += [f"~{prefix}"] if f"~{prefix}" not in parts else []
    return parts


def disambiguate(runs: list[Row]) -> None:
    """Runs of one experiment with different overrides get what differs in their labels (e.g.
    ``model.teacher.reward=rank_aware``, ``~data.tasks.tool``); the step count when that is not enough."""
    groups: dict[str, list[Row]] = {}
    for row in runs:
        row.name = row.name or row.label
        row.label = row.name
        groups.setdefault(row.name, []).append(row)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        keys = differing_keys([r.config for r in group])
        for row in group:
            parts = config_difference(row.config, [r.config for r in group], keys)
            row.label = f"{label} ({', '.join(parts)})" if parts else label
        labels = [r.label for r in group]
        for row in group:  # still alike (same config, e.g. a shorter run of it): the step count tells
            if labels.count(row.label) > 1:
                row.label = (
                    f"{row.label[:-1]}, {row.steps} steps)"
                    if row.label != label
                    else f"{label} ({row.steps} steps)"
                )


def normalise_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``ndcg_at_10`` (mteb) and ``ndcg@10`` (ours) → ``ndcg@10``; other keys dropped."""
    out = {}
    for key, value in metrics.items():
        name = MTEB_NAMES.get(key, key)
        if name in METRICS and isinstance(value, int | float):
            out[name] = float(value)
    return out


def mteb_key(task: str, title_separator: str | None) -> str:
    """The report's dataset name for an MTEB task; a non-default document text is part of the name."""
    if title_separator in (None, " "):
        return f"mteb/{task}"
    return f"mteb/{task} (title{title_separator.rstrip()}text)"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def run_config(run_dir: Path) -> dict[str, Any]:
    config_file = run_dir / "config.yaml"
    return (yaml.safe_load(config_file.read_text()) or {}) if config_file.exists() else {}


def eval_dataset_name(run_dir: Path, split: str | None) -> str:
    """The training-time eval set's name, ``<data folder or alias>-<split>`` (as MTEB local tasks name it)."""
    data = run_config(run_dir).get("data") or {}
    evaluation = data.get("eval") if isinstance(data.get("eval"), dict) else {}  # multi-task data: data.eval
    source = (
        "tiny_hotpotqa"
        if data.get("tiny")
        else (data.get("hub_name") or data.get("path") or evaluation.get("path") or "eval")
    )
    split = split or data.get("eval_split") or "dev"
    return f"{Path(str(source)).name}-{split}"


def step_files(run_dir: Path, folder: str) -> list[dict[str, Any]]:
    return [read_json(p) for p in sorted((run_dir / folder).glob("step_*.json"))]


def collect_run(results_file: Path) -> tuple[Row, Row | None]:
    """The run's row and its start embedder's row (None when the run has no "before" score)."""
    results = read_json(results_file)
    run_dir = results_file.parent
    for key in ("experiment", "metrics"):
        if key not in results:
            raise ValueError(
                f"{results_file}: missing key '{key}' (not a results.json written by experiments.train)"
            )
    evals = step_files(run_dir, "eval")
    dataset = eval_dataset_name(run_dir, evals[-1].get("split") if evals else None)
    method = str(results.get("method", "?"))
    budget = results.get("budget") or {}
    stored = run_config(run_dir)
    tiny = " [debug=tiny]" if stored.get("tiny_models") else ""
    row = Row(
        label=f"{method} · {results['experiment']}{tiny}",
        kind="run",
        method=method,
        start=str(results.get("start", "?")) + tiny,
        label_use=label_use_of(
            str(results.get("label_use", "?")).split(" (")[0], {"data": stored.get("data", {})}
        ),
        steps=budget.get("steps"),
        seconds_per_step=budget.get("seconds_per_step"),
        config=flatten(stored),
    )
    after = (results["metrics"] or {}).get("after")
    if after:
        row.scores[dataset] = normalise_metrics(after)
    curve = [(int(e["step"]), float(e["metrics"][PRIMARY])) for e in evals if PRIMARY in e.get("metrics", {})]
    if curve:
        row.curves[dataset] = curve
    for record in step_files(run_dir, "mteb"):
        for task, entry in record.get("tasks", {}).items():
            key = mteb_key(task, record.get("title_separator"))
            row.curves.setdefault(key, []).append(
                (int(record["step"]), float(entry.get("ndcg_at_10", entry["main_score"])))
            )
            row.scores[key] = normalise_metrics(entry)  # the last step's record wins
    standalone = run_dir / "mteb_eval" / "mteb_results.json"
    if standalone.exists():
        evaluated = read_json(standalone)
        for task, entry in evaluated.get("tasks", {}).items():
            row.scores[mteb_key(task, evaluated.get("title_separator"))] = normalise_metrics(entry)
    rerank = results.get("rerank") or {}
    if rerank.get("metrics"):
        first_stage = (rerank.get("first_stage") or {}).get("name_or_path", "first stage")
        reranked = f"{dataset} · rerank top-{rerank.get('top_k', '?')} of {first_stage}"
        for name, metrics in rerank["metrics"].items():
            if name == "student_rerank":
                row.scores[reranked] = normalise_metrics(metrics)
                continue
            what = {"first_stage": f"{first_stage} order", "teacher_rerank": "teacher reranking"}.get(
                name, name.replace("_", " ")
            )
            reference = Row(label="", name=f"reference: {what}", kind="reference", steps=0)
            reference.method, reference.label_use = "none", "–"
            reference.scores[reranked] = normalise_metrics(metrics)
            row.references.append(reference)
    before = (results["metrics"] or {}).get("before")
    start_row = None
    if before:
        start_row = Row(label=f"start: {row.start}", kind="start", start=row.start, label_use="none", steps=0)
        start_row.scores[dataset] = normalise_metrics(before)
        first_mteb = step_files(run_dir, "mteb")[:1]
        if first_mteb and int(first_mteb[0]["step"]) == 0:
            for task, entry in first_mteb[0].get("tasks", {}).items():
                start_row.scores[mteb_key(task, first_mteb[0].get("title_separator"))] = normalise_metrics(
                    entry
                )
    return row, start_row


def collect_baseline(results_file: Path) -> Row:
    results = read_json(results_file)
    name = results.get("name") or results_file.parent.name
    tokens = f", {results['max_length']} tokens" if results.get("max_length") else ""
    row = Row(
        label=f"baseline: {name} ({results.get('precision', 'fp32')}{tokens})",
        kind="baseline",
        method="none",
        start=str(name),
        label_use="none",
        steps=0,
    )
    for task, entry in results.get("tasks", {}).items():
        row.scores[mteb_key(task, results.get("title_separator"))] = normalise_metrics(entry)
    return row


def merge_start(rows: list[Row], new: Row) -> None:
    """Several runs from the same start share one start row (scores of every dataset they saw)."""
    for row in rows:
        if row.kind == "start" and row.start == new.start:
            for dataset, metrics in new.scores.items():
                row.scores.setdefault(dataset, metrics)
            return
    rows.append(new)


def collect(output_root: Path, exclude: Path | None = None) -> list[Row]:
    """All rows under ``output_root``: starts, baselines, then runs (contrastive first)."""
    starts: list[Row] = []
    runs: list[Row] = []
    for results_file in sorted(output_root.rglob("results.json")):
        if exclude and exclude in results_file.parents:
            continue
        row, start_row = collect_run(results_file)
        runs.append(row)
        if start_row is not None:
            merge_start(starts, start_row)
    baselines = [collect_baseline(p) for p in sorted((output_root / "eval").glob("*/mteb_results.json"))]
    disambiguate(runs)
    runs.sort(key=lambda r: (r.method != "contrastive", r.label))
    return starts + baselines + references_of(runs) + runs


def references_of(runs: list[Row]) -> list[Row]:
    """The runs' reference rows (e.g. Rabtriever's first stage and teacher reranking), named after their
    run's (disambiguated) label."""
    rows = []
    for run in runs:
        for reference in run.references:
            reference.label = f"{reference.name} ({run.label})"
            rows.append(reference)
    return rows


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
        raise ValueError("no output root given")
    out = Path(out) if out else roots[0] / "report"
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(
                f"output root {root} does not exist (set --output-root or LSR_OUTPUT_ROOT)"
            )
    rows = merge_rows([collect(root, exclude=out) for root in roots])
    if not rows:
        names = ", ".join(str(r) for r in roots)
        raise FileNotFoundError(
            f"no results.json or eval/*/mteb_results.json under {names}: nothing to report"
        )
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    main()
