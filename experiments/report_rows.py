"""The report's rows and the per-step series a run left behind (``make report``; docs/evaluation.md).

A run's series come from its run directory (``eval/step_*.json`` for retrieval, ``eval/rag_step_*.json``
for the downstream ``callbacks=rag`` evaluation) and, when that directory is gone (``lab_results/`` keeps
only ``results.json`` copies), from what ``results.json`` holds: ``eval_history`` (written by
``experiments.train``) and ``rag.history`` (written by :class:`callbacks.rag_eval.RagEvaluation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.cli import UsageError

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
PRIMARY = "ndcg@10"
RAG_METRICS = ("answer_nll", "em", "f1")
RAG_COLUMNS = tuple(f"rag/{m}" for m in RAG_METRICS)
RAG_PRIMARY = "rag/answer_nll"
RAG_REFERENCE_NAMES = {"none": "no retrieval", "bm25": "BM25", "oracle": "oracle (gold paragraphs)"}


@dataclass
class Row:
    """One line of the comparison: a start embedder, a baseline model, a reference, or a trained run."""

    label: str
    kind: str  # "start" | "baseline" | "reference" | "run"
    method: str = ""
    start: str = ""
    label_use: str = ""
    steps: int | None = None
    seconds_per_step: float | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> metric -> value
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # dataset -> [(step, nDCG@10)]
    rag_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # dataset -> [(step, NLL)]
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.yaml, flattened to dotted keys
    name: str = ""  # the label before disambiguation (method · experiment)
    references: list[Row] = field(default_factory=list)  # reference rows the run measured (e.g. rerankers)
    rag_references: list[Row] = field(default_factory=list)  # the rag rows (no retrieval / BM25 / oracle)
    run_dir: str = ""  # where the run wrote (results.json["run_dir"]): one row per run across copies


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def run_directory(results_file: Path, results: dict[str, Any]) -> Path | None:
    """The run directory of a ``results.json``: its folder, or for a copy (``lab_results/<name>.json``) the
    ``run_dir`` it names when that still exists; None when the run directory is gone."""
    if results_file.name == "results.json":
        return results_file.parent
    recorded = Path(str(results.get("run_dir") or ""))
    return recorded if str(recorded) not in ("", ".") and recorded.is_dir() else None


def run_config(run_dir: Path | None) -> dict[str, Any]:
    config_file = run_dir / "config.yaml" if run_dir is not None else None
    return (yaml.safe_load(config_file.read_text()) or {}) if config_file and config_file.exists() else {}


def eval_dataset_name(run_dir: Path | None, split: str | None, results: dict[str, Any] | None = None) -> str:
    """The training-time eval set's name, ``<data folder or alias>-<split>`` (as MTEB local tasks name it);
    without a run directory, the ``eval_set`` results.json recorded (``dev (run dir gone)`` before that)."""
    if run_dir is None:
        return str((results or {}).get("eval_set") or f"{split or 'dev'} (run dir gone)")
    data = run_config(run_dir).get("data") or {}
    evaluation = data.get("eval") if isinstance(data.get("eval"), dict) else {}  # multi-task data: data.eval
    source = (
        "tiny_hotpotqa"
        if data.get("tiny")
        else (data.get("hub_name") or data.get("path") or evaluation.get("path") or "eval")
    )
    split = split or data.get("eval_split") or "dev"
    return f"{Path(str(source)).name}-{split}"


def step_files(run_dir: Path | None, folder: str, prefix: str = "step_") -> list[dict[str, Any]]:
    if run_dir is None:
        return []
    return [read_json(p) for p in sorted((run_dir / folder).glob(f"{prefix}*.json"))]


def eval_records(run_dir: Path | None, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The training-time evaluations, ``[{"step", "metrics", ...}]``: the run dir's step files, else
    ``results.json["eval_history"]``."""
    records = step_files(run_dir, "eval")
    if records:
        return records
    return [
        {"step": h["step"], "metrics": {k: v for k, v in h.items() if k != "step"}}
        for h in results.get("eval_history") or []
    ]


def rag_curve(run_dir: Path | None, results: dict[str, Any]) -> list[tuple[int, float]]:
    """``[(step, rag/answer_nll)]``: the run dir's ``eval/rag_step_*.json``, else ``results.json["rag"]``."""
    records = step_files(run_dir, "eval", prefix="rag_step_")
    if records:
        return [(int(r["step"]), float(r["metrics"]["answer_nll"])) for r in records]
    history = (results.get("rag") or {}).get("history") or []
    return [(int(h["step"]), float(h["answer_nll"])) for h in history if "answer_nll" in h]


def rag_scores(metrics: dict[str, Any] | None) -> dict[str, float]:
    """``{"answer_nll": 2.1, ...}`` → ``{"rag/answer_nll": 2.1, ...}`` (other keys dropped)."""
    return {f"rag/{m}": float(metrics[m]) for m in RAG_METRICS if m in (metrics or {})}


def rag_reference_rows(results: dict[str, Any], dataset: str) -> list[Row]:
    """The rag reference rows a run measured (cached, so equal across runs with the same LM and k); the
    label names the LM, k and the question count so rows of different settings never merge."""
    rag = results.get("rag") or {}
    lm = (rag.get("lm") or {}).get("name_or_path", "LM")
    setting = f"top-{rag.get('top_k', '?')}, {lm}, {rag.get('questions', '?')} questions"
    rows = []
    for kind, metrics in (rag.get("references") or {}).items():
        name = RAG_REFERENCE_NAMES.get(kind, kind)
        row = Row(label=f"rag reference: {name} ({setting})", kind="reference", method="none", steps=0)
        row.label_use = "gold paragraphs" if kind == "oracle" else "none"
        row.scores[dataset] = rag_scores(metrics)
        rows.append(row)
    return rows


def unique_references(rows: list[Row]) -> list[Row]:
    """One rag reference row per label and dataset (every run of a setting measured the same cached rows)."""
    seen: dict[str, Row] = {}
    for row in rows:
        if row.label not in seen:
            seen[row.label] = row
            continue
        for dataset, scores in row.scores.items():
            seen[row.label].scores.setdefault(dataset, scores)
    return list(seen.values())


def evaluation_history(run_dir: Path) -> list[dict[str, Any]]:
    """``[{"step", <metric>: value, ...}]`` of the run's ``eval/step_*.json``: what results.json keeps as
    ``eval_history`` so the report's curves survive the run directory (lab_results/ keeps results.json)."""
    return [{"step": int(r["step"]), **r.get("metrics", {})} for r in step_files(run_dir, "eval")]
