"""Collect every run into one comparison table and plots, led by the paper-claims table (``make report``).

Reads, under ``--output-root`` (one or more folders; default ``runs``, or ``$LSR_OUTPUT_ROOT``):
- each run's ``results.json`` (method, start, label use, budget, dev metrics before/after training,
  ``rag`` of ``callbacks=rag``), its ``eval/step_*.json`` (training-time retrieval evaluation),
  ``eval/rag_step_*.json`` (downstream RAG evaluation), ``mteb/step_*.json`` (``MTEBCallback``) and
  ``mteb_eval/mteb_results.json`` (``make eval`` on the run);
- standalone ``make eval`` results of baseline models, ``<root>/eval/*/mteb_results.json``;
- with ``--claims`` (default ``lab_results/claims.yaml`` when it exists), the result files that claims map
  lists (``lab_results/<name>.json`` copies: their run directories when still there, else the per-step
  series results.json holds) and the claims of ``experiments/lab_claims.yaml`` (:mod:`experiments.claims`).

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

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.claims import claim_verdicts, claims_markdown, write_claims_csv
from experiments.report_labels import disambiguate, flatten
from experiments.report_plots import plot_bars, plot_curves
from experiments.report_rows import (
    METRICS,
    PRIMARY,
    Row,
    eval_dataset_name,
    eval_records,
    rag_curve,
    rag_reference_rows,
    rag_scores,
    read_json,
    run_config,
    run_directory,
    step_files,
    unique_references,
)
from experiments.report_tables import markdown_table, write_csv
from experiments.run_dir import label_use_of

MTEB_NAMES = {
    "ndcg_at_10": "ndcg@10",
    "recall_at_10": "recall@10",
    "recall_at_100": "recall@100",
    "mrr_at_10": "mrr@10",
}


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


def load_results(results_file: Path) -> dict[str, Any]:
    results = read_json(results_file)
    for key in ("experiment", "metrics"):
        if key not in results:
            raise ValueError(
                f"{results_file}: missing key '{key}' (not a results.json written by experiments.train)"
            )
    return results


def collect_run(results_file: Path) -> tuple[Row, Row | None]:
    """The run's row and its start embedder's row (None when the run has no "before" score)."""
    results = load_results(results_file)
    run_dir = run_directory(results_file, results)
    evals = eval_records(run_dir, results)
    dataset = eval_dataset_name(run_dir, evals[-1].get("split") if evals else None, results)
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
        config=flatten(stored) or {"file": results_file.name},  # a copy without its run dir: its file name
        run_dir=str(results.get("run_dir") or results_file.resolve().parent),
    )
    after = (results["metrics"] or {}).get("after")
    if after:
        row.scores[dataset] = normalise_metrics(after)
    curve = [(int(e["step"]), float(e["metrics"][PRIMARY])) for e in evals if PRIMARY in e.get("metrics", {})]
    if curve:
        row.curves[dataset] = curve
    add_mteb_scores(row, run_dir)
    add_rerank_references(row, results, dataset)
    add_rag(row, results, run_dir, dataset)
    return row, start_row_of(row, results, run_dir, dataset)


def add_mteb_scores(row: Row, run_dir: Path | None) -> None:
    """MTEB curves and last scores (``mteb/step_*.json``) and a standalone ``make eval`` of the run."""
    for record in step_files(run_dir, "mteb"):
        for task, entry in record.get("tasks", {}).items():
            key = mteb_key(task, record.get("title_separator"))
            row.curves.setdefault(key, []).append(
                (int(record["step"]), float(entry.get("ndcg_at_10", entry["main_score"])))
            )
            row.scores[key] = normalise_metrics(entry)  # the last step's record wins
    standalone = run_dir / "mteb_eval" / "mteb_results.json" if run_dir is not None else None
    if standalone is not None and standalone.exists():
        evaluated = read_json(standalone)
        for task, entry in evaluated.get("tasks", {}).items():
            row.scores[mteb_key(task, evaluated.get("title_separator"))] = normalise_metrics(entry)


def add_rerank_references(row: Row, results: dict[str, Any], dataset: str) -> None:
    """Rabtriever's reranking (``results.json["rerank"]``): the student's scores and reference rows."""
    rerank = results.get("rerank") or {}
    if not rerank.get("metrics"):
        return
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


def add_rag(row: Row, results: dict[str, Any], run_dir: Path | None, dataset: str) -> None:
    """``callbacks=rag``: the last row's rag/* scores, the rag/answer_nll curve and the reference rows."""
    rag = results.get("rag") or {}
    if rag.get("after"):
        row.scores.setdefault(dataset, {}).update(rag_scores(rag["after"]))
    curve = rag_curve(run_dir, results)
    if curve:
        row.rag_curves[dataset] = curve
    row.rag_references = rag_reference_rows(results, dataset)


def start_row_of(row: Row, results: dict[str, Any], run_dir: Path | None, dataset: str) -> Row | None:
    """The start embedder's row: the "before" scores (retrieval, rag at step 0, MTEB at step 0)."""
    before = (results["metrics"] or {}).get("before")
    if not before:
        return None
    start_row = Row(label=f"start: {row.start}", kind="start", start=row.start, label_use="none", steps=0)
    start_row.scores[dataset] = {
        **normalise_metrics(before),
        **rag_scores((results.get("rag") or {}).get("before")),
    }
    first_mteb = step_files(run_dir, "mteb")[:1]
    if first_mteb and int(first_mteb[0]["step"]) == 0:
        for task, entry in first_mteb[0].get("tasks", {}).items():
            start_row.scores[mteb_key(task, first_mteb[0].get("title_separator"))] = normalise_metrics(entry)
    return start_row


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
    """Several runs from the same start share one start row (scores of every dataset they saw; a metric
    one run lacks, e.g. rag/* without callbacks=rag, comes from another)."""
    for row in rows:
        if row.kind == "start" and row.start == new.start:
            for dataset, metrics in new.scores.items():
                for metric, value in metrics.items():
                    row.scores.setdefault(dataset, {}).setdefault(metric, value)
            return
    rows.append(new)


def raw_rows(output_root: Path, exclude: Path | None = None) -> list[Row]:
    """Each run's row and its start row, and each baseline, under ``output_root`` (unordered)."""
    rows: list[Row] = []
    for results_file in sorted(output_root.rglob("results.json")):
        if exclude and exclude in results_file.parents:
            continue
        rows += [r for r in collect_run(results_file) if r is not None]
    rows += [collect_baseline(p) for p in sorted((output_root / "eval").glob("*/mteb_results.json"))]
    return rows


def collect(output_root: Path, exclude: Path | None = None) -> list[Row]:
    """All rows under ``output_root``: starts, baselines, references, then runs (contrastive first)."""
    return merge_rows([raw_rows(output_root, exclude)])


def merge_rows(groups: list[list[Row]]) -> list[Row]:
    """Rows of several output roots in one order: starts, baselines, references, then runs (contrastive
    first); a run seen twice (its run dir and a lab_results copy) is kept once."""
    starts: list[Row] = []
    for row in (r for group in groups for r in group if r.kind == "start"):
        merge_start(starts, row)
    baselines = [r for group in groups for r in group if r.kind == "baseline"]
    runs: list[Row] = []
    for row in (r for group in groups for r in group if r.kind == "run"):
        if not any(row.run_dir and row.run_dir == other.run_dir for other in runs):
            runs.append(row)
    disambiguate(runs)
    runs.sort(key=lambda r: (r.method != "contrastive", r.label))
    return starts + baselines + references_of(runs) + runs


def references_of(runs: list[Row]) -> list[Row]:
    """The runs' reference rows: the rag rows (no retrieval / BM25 / oracle; once per setting and dataset)
    and the others (e.g. Rabtriever's first stage and teacher reranking) named after their run's label."""
    rows = unique_references([reference for run in runs for reference in run.rag_references])
    for run in runs:
        for reference in run.references:
            reference.label = f"{reference.name} ({run.label})"
            rows.append(reference)
    return rows


def build_report(
    output_root: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    claims_map: str | Path | None = None,
) -> dict[str, Path]:
    """Collect the runs under ``output_root`` (one folder or several) and the result files a claims map
    lists, and write the claims table (with a map), the results table, CSVs and plots."""
    roots = [Path(output_root)] if isinstance(output_root, str | Path) else [Path(r) for r in output_root]
    if not roots:
        raise ValueError("no output root given")
    out = Path(out) if out else roots[0] / "report"
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(
                f"output root {root} does not exist (set --output-root or LSR_OUTPUT_ROOT)"
            )
    verdicts, mapped = claim_verdicts(Path(claims_map)) if claims_map else ([], [])
    groups = [raw_rows(root, exclude=out) for root in roots]
    groups.append([r for file in mapped if "metrics" in read_json(file) for r in collect_run(file) if r])
    rows = merge_rows(groups)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    try:
        paths = build_report(args.output_root, args.out, claims)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(paths["table"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
