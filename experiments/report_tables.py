"""The report's results table (markdown, one table per dataset) and its long-format CSV (``make report``).

Columns: label use, steps, s/step, nDCG@10, Recall@10, Recall@100, MRR@10, Δ nDCG@10 over the run's own
start; with ``callbacks=rag`` also rag/answer_nll, rag/em, rag/f1 and their Δ over the start (the start
row holds the step-0 values). See docs/evaluation.md, "make report".
"""

from __future__ import annotations

import csv
from pathlib import Path

from experiments.report_plots import datasets_of
from experiments.report_rows import METRICS, PRIMARY, RAG_COLUMNS, Row


def start_value(rows: list[Row], row: Row, dataset: str, metric: str = PRIMARY) -> float | None:
    for other in rows:
        if other.kind == "start" and other.start == row.start and metric in other.scores.get(dataset, {}):
            return other.scores[dataset][metric]
    return None


def delta(rows: list[Row], row: Row, dataset: str, metric: str) -> str:
    """The run's ``metric`` minus its own start's (``–`` for other rows or without a start value)."""
    scores = row.scores.get(dataset, {})
    base = start_value(rows, row, dataset, metric) if row.kind == "run" else None
    return f"{scores[metric] - base:+.4f}" if base is not None and metric in scores else "–"


def dataset_table(rows: list[Row], dataset: str) -> list[str]:
    """One dataset's table; rag columns (value, Δ over the start) when any row has them."""
    with_rag = any(c in r.scores.get(dataset, {}) for r in rows for c in RAG_COLUMNS)
    rag = RAG_COLUMNS if with_rag else ()
    header = [*METRICS, "Δ nDCG@10", *rag, *(f"Δ {c}" for c in rag)]
    lines = [
        f"## {dataset}",
        "",
        "| row | label use | steps | s/step | " + " | ".join(header) + " |",
        "|---|---|---|---|" + "---|" * len(header),
    ]
    for row in rows:
        scores = row.scores.get(dataset)
        if not scores:
            continue
        sps = f"{row.seconds_per_step:.2f}" if row.seconds_per_step else "–"
        values = [f"{scores[m]:.4f}" if m in scores else "–" for m in (*METRICS,)]
        values.append(delta(rows, row, dataset, PRIMARY))
        values += [f"{scores[m]:.4f}" if m in scores else "–" for m in rag]
        values += [delta(rows, row, dataset, m) for m in rag]
        steps = row.steps if row.steps is not None else "–"
        lines.append(f"| {row.label} | {row.label_use} | {steps} | {sps} | " + " | ".join(values) + " |")
    return [*lines, ""]


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "# Results",
        "",
        "Final (last-step) scores; `start:` rows are the untrained embedders, `baseline:` rows "
        "models evaluated as they are, `rag reference:` rows the frozen LM reading no / BM25 / gold "
        "documents. Δ is the run's value minus its own start's (rag/answer_nll: lower is better).",
        "",
    ]
    for dataset in datasets_of(rows):
        lines += dataset_table(rows, dataset)
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "kind", "method", "start", "label_use", "dataset", "metric", "value"])
        for row in rows:
            for dataset, scores in row.scores.items():
                for metric, value in scores.items():
                    fields = [row.label, row.kind, row.method, row.start, row.label_use, dataset, metric]
                    writer.writerow([*fields, f"{value:.6f}"])
