"""Export the trained embedder at the end of training as a sentence-transformers / HF folder with a model card.

The card (``README.md``) says what the model is and how it was made: method, starting embedder, data and
label use, training budget, scores before and after training (and MTEB scores when ``MTEBCallback`` ran),
the hyperparameters, and how to load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.base import RetrieverModule
from lightning_modules.fsdp import full_parameters

METRIC_ORDER = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def _front_matter(method: str, hparams: dict) -> list[str]:
    tags = [
        "sentence-transformers",
        "feature-extraction",
        "dense-retrieval",
        "llm-supervised-retrievers",
        method,
    ]
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    base = (hparams.get("embedder") or {}).get("name_or_path", "")
    if "/" in base and not base.startswith(("/", ".", "~")):  # a hub name, not a local folder or alias
        lines.append(f"base_model: {base}")
    return lines + ["---", ""]


def _scores_table(before: dict | None, after: dict | None) -> list[str]:
    names = [m for m in METRIC_ORDER if m in (after or {}) or m in (before or {})]
    names += sorted(set(after or {}) - set(names))
    if not names:
        return []
    lines = ["| metric | before training | after training | Δ |", "|---|---|---|---|"]
    for name in names:
        b, a = (before or {}).get(name), (after or {}).get(name)
        delta = f"{a - b:+.4f}" if a is not None and b is not None else "–"
        lines.append(
            f"| {name} | {b:.4f} | {a:.4f} | {delta} |"
            if b is not None and a is not None
            else f"| {name} | {'–' if b is None else f'{b:.4f}'} | {'–' if a is None else f'{a:.4f}'} | {delta} |"
        )
    return lines


def _mteb_table(record: dict[str, Any]) -> list[str]:
    tasks = record.get("tasks") or {}
    metrics = sorted({m for entry in tasks.values() for m in entry if m != "main_score"})
    lines = [
        f"MTEB (mteb {_mteb_version()}, step {record.get('step', '?')}, documents as "
        f"`title{record.get('title_separator', ' ')}text`):",
        "",
        "| task | main score | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for task, entry in tasks.items():
        lines.append(
            f"| {task} | {entry['main_score']:.4f} | "
            + " | ".join(f"{entry[m]:.4f}" if m in entry else "–" for m in metrics)
            + " |"
        )
    return lines


def _mteb_version() -> str:
    try:
        from importlib.metadata import version

        return version("mteb")
    except Exception:
        return "?"


def last_mteb_record(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The last ``mteb/step_*.json`` an :class:`~callbacks.mteb_eval.MTEBCallback` wrote in ``run_dir``."""
    if run_dir is None:
        return None
    files = sorted(Path(run_dir, "mteb").glob("step_*.json"))
    return json.loads(files[-1].read_text()) if files else None


def model_card(
    method: str,
    hparams: dict,
    metrics: dict | None = None,
    results: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    mteb: dict[str, Any] | None = None,
) -> str:
    """The exported folder's ``README.md``.

    Args:
        method: the module class (e.g. ``ContrastiveModule``); ``results["method"]`` is preferred when given.
        hparams: the module's hyperparameters.
        metrics: scores after training (kept for callers that have nothing else).
        results: the run's ``results.json`` dict (method, start, candidates, label use, budget, before/after).
        config: the resolved run config (for the data section).
        mteb: an ``MTEBCallback`` record (``{"step", "tasks": {task: {metric: value}}}``).
    """
    results = results or {}
    meta_method = results.get("method") or method
    title = (
        f"{results['experiment']}: {meta_method} retriever"
        if results.get("experiment")
        else f"{meta_method} embedder"
    )
    embedder = hparams.get("embedder") or {}
    lines = _front_matter(str(meta_method), hparams) + [
        f"# {title}",
        "",
        "Trained with llm-supervised-retrievers: a dense retriever that learns from a frozen causal LM "
        "(or, for the contrastive baseline, from relevance labels).",
        "",
    ]
    lines += _method_section(method, meta_method, results, hparams, embedder)
    lines += _data_section((config or {}).get("data") or {}, results)
    lines += _budget_section(results.get("budget") or {})
    lines += _scores_section(results, metrics, mteb)
    lines += _usage_section(embedder)
    lines += ["## Hyperparameters", "", "```json", json.dumps(hparams, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _method_section(method: str, meta_method: str, results: dict, hparams: dict, embedder: dict) -> list[str]:
    lines = ["## Method", "", f"- method: {meta_method} (module `{method}`)"]
    if results.get("start"):
        lines.append(f"- starting embedder: {results['start']}")
    if embedder:
        lora = "LoRA merged into the weights" if embedder.get("lora") else "full fine-tuning"
        lines.append(
            f"- backbone `{embedder.get('name_or_path')}`, pooling `{embedder.get('pooling')}`, normalize "
            f"{embedder.get('normalize', True)}, max length {embedder.get('max_length')}, {lora}"
        )
        for kind in ("query", "document"):
            if embedder.get(f"{kind}_instruction"):
                lines.append(f"- {kind} instruction: `{embedder[f'{kind}_instruction']}`")
    if (hparams.get("frozen_lm") or {}).get("name_or_path"):
        lines.append(
            f"- frozen LM (teacher, not part of this model): `{hparams['frozen_lm']['name_or_path']}`"
        )
    return [*lines, ""]


def _data_section(data: dict, results: dict) -> list[str]:
    if not (data or results.get("candidates") or results.get("label_use")):
        return []
    lines = ["## Data", ""]
    if data:
        source = "tiny fixture (debug=tiny)" if data.get("tiny") else data.get("hub_name") or data.get("path")
        lines.append(
            f"- data: `{source}`, trained on split `{data.get('train_split')}`, evaluated on `{data.get('eval_split')}`"
        )
    if results.get("candidates"):
        lines.append(f"- candidates / negatives: {results['candidates']}")
    if results.get("label_use"):
        lines.append(f"- label use: {results['label_use']}")
    return [*lines, ""]


def _budget_section(budget: dict) -> list[str]:
    if not budget:
        return []
    sps = budget.get("seconds_per_step")
    return [
        "## Training budget",
        "",
        f"- steps: {budget.get('steps')}"
        + (f", {sps:.2f} s/step" if sps else "")
        + (f", peak memory {budget['peak_memory_mb']:.0f} MB" if budget.get("peak_memory_mb") else ""),
        "",
    ]


def _scores_section(results: dict, metrics: dict | None, mteb: dict[str, Any] | None) -> list[str]:
    before = (results.get("metrics") or {}).get("before")
    after = (results.get("metrics") or {}).get("after") or metrics
    table = _scores_table(before, after)
    if not (table or mteb):
        return []
    lines = ["## Scores", ""]
    if table:
        lines += ["Retrieval on the evaluation split (last checkpoint):", "", *table, ""]
    if mteb:
        lines += [*_mteb_table(mteb), ""]
    return lines


def _usage_section(embedder: dict) -> list[str]:
    query_prompt = embedder.get("query_instruction")
    encode_query = 'model.encode(queries, prompt_name="query")' if query_prompt else "model.encode(queries)"
    encode_docs = (
        'model.encode(documents, prompt_name="document")'
        if embedder.get("document_instruction")
        else "model.encode(documents)"
    )
    return [
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
        f"query_embeddings = {encode_query}",
        f"document_embeddings = {encode_docs}",
        "scores = model.similarity(query_embeddings, document_embeddings)",
        "```",
        "",
        "Or evaluate it with MTEB: `make eval CKPT=path/to/this/folder TASKS=hotpotqa@dev`.",
        "",
    ]


def run_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


class ExportEmbedder(L.Callback):
    """Exports the trained embedder at the end of fit (rank 0; under FSDP every rank first takes part in
    gathering the embedder's full parameters, :func:`lightning_modules.fsdp.full_parameters`); its
    ``README.md`` model card is written once the run's results are known (:meth:`on_results`, see
    ``callbacks/results.py``)."""

    def __init__(self, dirname: str = "export"):
        self.dirname = dirname
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        embedder = pl_module.embedder if isinstance(pl_module, RetrieverModule) else None
        if embedder is None:
            return
        parameters = None
        root = trainer.strategy.model
        if isinstance(trainer.strategy, FSDPStrategy) and root is not None and root is not pl_module:
            parameters = full_parameters(embedder, root)  # collective: every rank
        if not trainer.is_global_zero:
            return
        self.path = Path(trainer.default_root_dir) / self.dirname
        pl_module.export(self.path, parameters=parameters)
        rank_zero_info(f"exported the embedder to {self.path}")

    def results_summary(self) -> dict[str, Any]:
        return {"export_dir": str(self.path)} if self.path is not None else {}

    def on_results(self, trainer: L.Trainer, pl_module: L.LightningModule, results: dict[str, Any]) -> None:
        """Write the model card: method, data, budget and scores of the finished run."""
        if self.path is None:
            return
        card = model_card(
            type(pl_module).__name__,
            dict(pl_module.hparams),
            results["metrics"]["after"],
            results=results,
            config=run_config(trainer.default_root_dir),
            mteb=last_mteb_record(trainer.default_root_dir),
        )
        (self.path / "README.md").write_text(card)
