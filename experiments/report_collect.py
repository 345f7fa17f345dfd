"""Read every run and evaluation under an output root into report rows (``experiments/report.py`` writes
them out).

Reads each run's ``results.json`` (method, start, label use, budget, dev metrics before/after training,
``rag`` of ``callbacks=rag``), its ``eval/step_*.json`` (training-time retrieval evaluation),
``eval/rag_step_*.json`` (downstream RAG evaluation), ``mteb/step_*.json`` (``MTEBCallback``) and
``mteb_eval/mteb_results.json`` (``make eval`` on the run); and standalone ``make eval`` results of
baseline models, ``<root>/eval/*/mteb_results.json``. A ``lab_results/<name>.json`` copy whose run
directory is gone gives its series from results.json (``experiments/report_rows.py``). Runs of one experiment with different overrides are
told apart by what differs in their configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.cli import UsageError
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
from experiments.run_dir import flatten as flatten_config
from experiments.run_dir import label_use_of

MTEB_NAMES = {
    "ndcg_at_10": "ndcg@10",
    "recall_at_10": "recall@10",
    "recall_at_100": "recall@100",
    "mrr_at_10": "mrr@10",
}


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


def collect_run(results_file: Path) -> tuple[Row, Row | None]:
    """The run's row and its start embedder's row (None when the run has no "before" score). A
    ``lab_results/<name>.json`` copy reads its run directory while that exists, else what it holds."""
    results = read_json(results_file)
    for key in ("experiment", "metrics"):
        if key not in results:
            raise UsageError(
                f"{results_file}: missing key '{key}' (not a results.json written by experiments.train)"
            )
    run_dir = run_directory(results_file, results)
    evals = eval_records(run_dir, results)
    dataset = eval_dataset_name(run_dir, evals[-1].get("split") if evals else None, results)
    row = run_row(results, run_config(run_dir))
    row.run_dir = str(results.get("run_dir") or results_file.resolve().parent)
    row.config = row.config or {"file": results_file.name}  # a copy without its run dir: its file name
    after = (results["metrics"] or {}).get("after")
    if after:
        row.scores[dataset] = normalise_metrics(after)
    curve = [(int(e["step"]), float(e["metrics"][PRIMARY])) for e in evals if PRIMARY in e.get("metrics", {})]
    if curve:
        row.curves[dataset] = curve
    add_mteb_scores(row, run_dir)
    add_rerank_references(row, results.get("rerank") or {}, dataset)
    add_rag(row, results, run_dir, dataset)
    return row, start_row_of(row, results, run_dir, dataset)


def run_row(results: dict[str, Any], stored: dict[str, Any]) -> Row:
    """A run's row from its ``results.json`` and stored ``config.yaml`` (scores added by the caller)."""
    method = str(results.get("method", "?"))
    budget = results.get("budget") or {}
    tiny = " [debug=tiny]" if stored.get("tiny_models") else ""
    return Row(
        label=f"{method} · {results['experiment']}{tiny}",
        kind="run",
        method=method,
        start=str(results.get("start", "?")) + tiny,
        label_use=label_use_of(
            str(results.get("label_use", "?")).split(" (")[0],
            {"data": stored.get("data", {}), "model": stored.get("model", {})},
        ),
        steps=budget.get("steps"),
        seconds_per_step=budget.get("seconds_per_step"),
        config=flatten(stored),
    )


def add_mteb_scores(row: Row, run_dir: Path | None) -> None:
    """MTEB curves and last scores of ``MTEBCallback`` (``mteb/step_*.json``), then ``make eval`` on the run."""
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


def add_rerank_references(row: Row, rerank: dict[str, Any], dataset: str) -> None:
    """Rabtriever's reranking: the student's row gets its score, first stage and teacher reference rows."""
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
    """The start embedder's row from the run's "before" scores (retrieval, rag at step 0, a step-0 MTEB
    record)."""
    before = (results["metrics"] or {}).get("before")
    if not before:
        return None
    start = Row(label=f"start: {row.start}", kind="start", start=row.start, label_use="none", steps=0)
    start.scores[dataset] = {
        **normalise_metrics(before),
        **rag_scores((results.get("rag") or {}).get("before")),
    }
    first_mteb = step_files(run_dir, "mteb")[:1]
    if first_mteb and int(first_mteb[0]["step"]) == 0:
        for task, entry in first_mteb[0].get("tasks", {}).items():
            start.scores[mteb_key(task, first_mteb[0].get("title_separator"))] = normalise_metrics(entry)
    return start


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
    """Rows of several sources in one order: starts, baselines, references, then runs (contrastive first);
    a run seen twice (its run dir and a lab_results copy) is kept once."""
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
