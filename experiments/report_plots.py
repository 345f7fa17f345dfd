"""The report's plots (``make report``): metrics against training step, and final nDCG@10 as bars.

``metric_vs_step.png`` has one panel per (metric, dataset): nDCG@10 of every dataset with curves, then
``rag/answer_nll`` (the frozen LM's answer NLL with each run's top-k, ``callbacks=rag``) of every dataset
that has it; one line per run; rows that do not train (starts, baselines, the rag references no retrieval /
BM25 / oracle) are dashed horizontal lines. See docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments.report_rows import PRIMARY, RAG_PRIMARY, Row


def datasets_of(rows: list[Row]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        seen += [d for d in row.scores if d not in seen]
    return seen


def curve_panels(rows: list[Row]) -> list[tuple[str, str]]:
    """``(metric, dataset)`` of each panel: nDCG@10 panels first, then rag/answer_nll panels."""
    datasets = datasets_of(rows)
    panels = [(PRIMARY, d) for d in datasets if any(d in r.curves for r in rows)]
    panels += [(RAG_PRIMARY, d) for d in datasets if any(d in r.rag_curves for r in rows)]
    return panels or [(PRIMARY, "(no evaluation curves)")]


def draw_panel(ax, rows: list[Row], metric: str, dataset: str) -> None:
    for row in rows:
        curves = row.curves if metric == PRIMARY else row.rag_curves
        curve = sorted(curves.get(dataset, []))
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", label=row.label)
    for row in rows:
        value = row.scores.get(dataset, {}).get(metric)
        if row.kind != "run" and value is not None:
            ax.axhline(value, linestyle="--", linewidth=1, color="grey")
            ax.annotate(row.label, (0, value), fontsize=7, color="grey", va="bottom")
    ax.set_title(f"{metric} · {dataset}")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric + (" (lower is better)" if metric == RAG_PRIMARY else ""))
    ax.grid(alpha=0.3)
    if ax.lines and any(not line.get_label().startswith("_") for line in ax.lines):
        ax.legend(fontsize=7)


def plot_curves(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (metric, dataset) in zip(axes[0], panels):
        draw_panel(ax, rows, metric, dataset)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if any(PRIMARY in s for s in r.scores.values())]
    datasets = [d for d in datasets_of(rows) if any(PRIMARY in r.scores.get(d, {}) for r in rows)]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * len(datasets) * len(rows) + 2), 5 + 0.18 * len(rows)))
    for i, row in enumerate(rows):
        xs = [j + i * width for j, d in enumerate(datasets) if PRIMARY in row.scores.get(d, {})]
        ys = [row.scores[d][PRIMARY] for d in datasets if PRIMARY in row.scores.get(d, {})]
        bars = ax.bar(xs, ys, width=width, label=row.label)
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=10)
    ax.set_ylabel("nDCG@10 (final)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
