"""Downstream evaluation: what the current retriever's documents do for a frozen LM (``callbacks=rag``).

At every validation, after :class:`callbacks.RetrievalEvaluation`, each evaluation question with answers
gets the current model's top-k documents (reused from that evaluation's ranking at the same step, so the
corpus is encoded once), and the frozen LM reads ``[documents; question]``: the gold answer's mean token
NLL (teacher forcing) and the greedy answer's exact match / F1 (SQuAD normalisation). Three reference
rows — no retrieval, BM25 top-k, the gold paragraphs (oracle) — are computed once and cached on disk
(checksummed, keyed by LM identity, prompt settings, data, k and question set); so is the start's own row
(step 0, keyed by the module's untrained-score key). Logs ``rag/answer_nll``, ``rag/em``, ``rag/f1`` and
``rag/ref/<none|bm25|oracle>/<metric>``, writes ``<run>/eval/rag_step_<N>.json`` (per question) and
``<run>/eval/rag_references.json``, and contributes ``{"rag": ...}`` to ``results.json``
(:meth:`RagEvaluation.results_summary`). See docs/evaluation.md, "Downstream: what retrieval does for
the LM".
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from callbacks.rag_reader import DEFAULT_DOCUMENT_TEMPLATE, DEFAULT_TEMPLATE, PromptBuilder, ReaderPrompt
from callbacks.rag_rows import (
    METRICS,
    REFERENCES,
    RagQuestion,
    RowReader,
    rag_questions,
    reference_documents,
    row_metrics,
)
from callbacks.retrieval_eval import RetrievalEvaluation, retrieve_top_k
from datamodules.protocols import source_name
from datamodules.records import Document
from lightning_modules.base import RetrieverModule
from lightning_modules.llm_embedder.teacher import lm_identity
from lightning_modules.models.frozen_lm import FrozenCausalLM
from lightning_modules.protocols import CachesUntrainedScore
from retrieval.cache import (
    cache_key,
    cache_root,
    read_checked_json,
    write_checked_json,
    write_json_atomically,
)

CACHE_VERSION = 1
DEFAULT_LM = {"name_or_path": "smollm2-135m-instruct", "dtype": "bfloat16"}
PRECISIONS = ("fp32", "bf16")


def settings_problem(arguments: dict[str, Any]) -> str | None:
    """Why these :class:`RagEvaluation` arguments cannot work (naming the key), or None."""
    for key in ("top_k", "max_new_tokens", "batch_size", "document_max_tokens"):
        if not isinstance(arguments[key], int) or arguments[key] < 1:
            return f"{key} must be a positive integer, got {arguments[key]!r}"
    if arguments["max_questions"] is not None and (
        not isinstance(arguments["max_questions"], int) or arguments["max_questions"] < 1
    ):
        return f"max_questions must be null (all) or a positive integer, got {arguments['max_questions']!r}"
    if arguments["precision"] not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}, got {arguments['precision']!r}"
    valid = set(inspect.signature(FrozenCausalLM).parameters)
    unknown = sorted(set(arguments["lm"] or {}) - valid)
    if unknown:
        return f"lm has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
    if not arguments["use_module_lm"] and not (arguments["lm"] or {}).get("name_or_path"):
        return "lm.name_or_path is not set (or set use_module_lm=true to read with the module's frozen LM)"
    try:
        ReaderPrompt(
            arguments["template"],
            arguments["document_template"],
            arguments["chat_template"],
            arguments["document_max_tokens"],
        )
    except ValueError as err:
        return str(err)
    return None


class RagEvaluation(L.Callback):
    """The frozen LM's answers with the current retriever's top-k, next to three cached reference rows.

    Args:
        top_k: documents per question (the retriever's best first).
        max_questions: evaluate the first N questions with answers (null: all).
        use_module_lm: read with the module's own frozen LM (DREAM, LLM-Embedder, LLM2Vec-Gen, Rabtriever);
            default false: the configured ``lm``, the same LM for every method so numbers compare.
        lm: :class:`FrozenCausalLM` arguments of the configured LM (loaded frozen, in ``lm.dtype``).
        precision: ``fp32`` or ``bf16`` autocast around the LM passes.
        template / document_template / chat_template / document_max_tokens: the prompt
            (:class:`callbacks.rag_reader.ReaderPrompt`).
        max_new_tokens: the greedy answer's length limit.
        batch_size: prompts per LM pass (length-sorted).
        cache_references: reuse the reference rows (and the start's row) across runs from the disk cache.
    """

    def __init__(
        self,
        top_k: int = 3,
        max_questions: int | None = None,
        use_module_lm: bool = False,
        lm: dict[str, Any] | None = None,
        precision: str = "fp32",
        template: str = DEFAULT_TEMPLATE,
        document_template: str = DEFAULT_DOCUMENT_TEMPLATE,
        chat_template: bool = True,
        document_max_tokens: int = 128,
        max_new_tokens: int = 16,
        batch_size: int = 8,
        cache_references: bool = True,
    ):
        self.settings = {
            "top_k": top_k,
            "max_questions": max_questions,
            "use_module_lm": use_module_lm,
            "lm": dict(DEFAULT_LM if lm is None else lm),
            "precision": precision,
            "template": template,
            "document_template": document_template,
            "chat_template": chat_template,
            "document_max_tokens": document_max_tokens,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
        }
        problem = settings_problem(self.settings)
        if problem:
            raise ValueError(f"callbacks.rag: {problem}")
        self.top_k, self.max_questions, self.use_module_lm = top_k, max_questions, use_module_lm
        self.prompt = ReaderPrompt(template, document_template, chat_template, document_max_tokens)
        self.cache_references = cache_references
        self.reader: RowReader | None = None
        self.references: dict[str, dict[str, Any]] | None = None
        self.history: list[dict[str, Any]] = []
        self._questions: list[RagQuestion] | None = None
        self._lm_description: dict[str, Any] = {}
        self._data_key: dict[str, Any] | None = None
        self._run_dir: Path | None = None

    @classmethod
    def check_arguments(cls, **arguments: Any) -> None:
        """Raise ValueError for arguments the constructor would refuse (the config check calls it)."""
        bound = inspect.signature(cls).bind(**arguments)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values["lm"] = dict(DEFAULT_LM if values["lm"] is None else values["lm"])
        problem = settings_problem(values)
        if problem:
            raise ValueError(problem)

    # ---- the LM, loaded once ------------------------------------------------------------------------------
    def _module_lm(self, trainer: L.Trainer, pl_module: L.LightningModule) -> FrozenCausalLM:
        """The module's frozen LM. Not under FSDP: its layers are sharded units whose forward passes are
        collectives, and ranks reading different questions (and generating different lengths) would hang."""
        from lightning.pytorch.strategies import FSDPStrategy

        lm = pl_module.frozen_lm if isinstance(pl_module, RetrieverModule) else None
        if lm is None:
            raise ValueError(
                f"callbacks.rag.use_module_lm=true, but {type(pl_module).__name__} has no frozen LM "
                "(model.frozen_lm is null): set callbacks.rag.use_module_lm=false"
            )
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "callbacks.rag.use_module_lm=true cannot read with an FSDP-sharded frozen LM: "
                "set callbacks.rag.use_module_lm=false (the configured LM is loaded whole on every rank)"
            )
        return lm

    def _reader(self, trainer: L.Trainer, pl_module: L.LightningModule) -> RowReader:
        if self.reader is None:
            if self.use_module_lm:
                lm = self._module_lm(trainer, pl_module)
            else:
                lm = FrozenCausalLM(**self.settings["lm"])
            builder = PromptBuilder(lm.tokenizer, self.prompt)
            self.reader = RowReader(
                lm,
                builder,
                self.settings["batch_size"],
                self.settings["max_new_tokens"],
                self.settings["precision"],
            )
            self._lm_description = {
                "source": "module" if self.use_module_lm else "configured",
                "name_or_path": lm.name_or_path,
                "loaded_from": str(getattr(lm.config, "_name_or_path", "") or lm.name_or_path),
                "chat_template": builder.uses_chat,
            }
        if self.reader.lm.device != pl_module.device and not self.use_module_lm:
            self.reader.lm.to(pl_module.device)
        return self.reader

    # ---- cache keys -----------------------------------------------------------------------------------------
    def _key(self, datamodule: Any, questions: list[RagQuestion]) -> dict[str, Any]:
        """Everything the reference rows depend on: LM identity, prompt and reading settings, data, k, questions."""
        if self._data_key is not None:
            return self._data_key
        corpus = datamodule.load_corpus()
        settings = {k: v for k, v in self.settings.items() if k != "max_questions"}
        self._data_key = {
            "version": CACHE_VERSION,
            "lm": lm_identity(self.reader.lm),
            "chat_template": self.reader.builder.uses_chat,
            "settings": settings,
            "tiny_models": bool((self.settings["lm"] or {}).get("tiny", False)),
            "data": source_name(datamodule),
            "split": datamodule.eval_split,
            "corpus": cache_key(corpus.doc_ids),
            "questions": cache_key([[q.query_id, q.text, q.answers, q.relevant] for q in questions]),
        }
        return self._data_key

    def _cache_path(self, kind: str, key: dict[str, Any]) -> Path:
        return cache_root() / "rag" / f"{kind}-{cache_key(key)[:20]}.json"

    def _read_cache(self, trainer: L.Trainer, kind: str, key: dict[str, Any] | None) -> Any:
        """Rank 0 reads the entry (None when absent, damaged or switched off) and every rank gets its value."""
        value = None
        if self.cache_references and key is not None and trainer.is_global_zero:
            value = read_checked_json(self._cache_path(kind, key))
        return trainer.strategy.broadcast(value, src=0) if trainer.world_size > 1 else value

    def _write_cache(self, trainer: L.Trainer, kind: str, key: dict[str, Any] | None, value: Any) -> None:
        if self.cache_references and key is not None and trainer.is_global_zero:
            write_checked_json(self._cache_path(kind, key), {"key": key, **value})

    # ---- rows -----------------------------------------------------------------------------------------------
    def _reference_rows(self, trainer: L.Trainer, questions: list[RagQuestion]) -> dict[str, dict[str, Any]]:
        datamodule = trainer.datamodule
        key = self._key(datamodule, questions)
        cached = self._read_cache(trainer, "references", key)
        if isinstance(cached, dict) and set(REFERENCES) <= set(cached.get("rows", {})):
            return {kind: {**cached["rows"][kind], "cached": True} for kind in REFERENCES}
        corpus = datamodule.load_corpus().corpus
        rows = {}
        for kind in REFERENCES:
            start = time.perf_counter()
            documents = reference_documents(kind, questions, corpus, self.top_k)
            records = self.reader.score_sharded(trainer, questions, documents)
            rows[kind] = {
                "metrics": row_metrics(records),
                "per_question": records,
                "seconds": round(time.perf_counter() - start, 2),
            }
        self._write_cache(trainer, "references", key, {"rows": rows})
        return rows

    def _current_documents(
        self, trainer: L.Trainer, pl_module: L.LightningModule, questions: list[RagQuestion]
    ) -> tuple[list[list[Document]], str]:
        """The current model's top-k for each question and where it came from (``retrieval_eval``: that
        callback's ranking at this step; ``encoded``: encoded here because none was available)."""
        corpus = trainer.datamodule.load_corpus()
        evaluation = next((c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation)), None)
        ranking = evaluation.ranking(trainer.global_step) if evaluation is not None else None
        usable = (
            ranking is not None
            and evaluation.top_k >= self.top_k
            and all(q.query_id in ranking for q in questions)
        )
        if usable:
            return [[corpus.corpus[d] for d in ranking[q.query_id][: self.top_k]] for q in questions], (
                "retrieval_eval"
            )
        _, indices = retrieve_top_k(trainer, pl_module, [q.text for q in questions], corpus, self.top_k)
        doc_ids = corpus.doc_ids
        return [[corpus.corpus[doc_ids[int(i)]] for i in row] for row in indices], "encoded"

    def _current_row(
        self, trainer: L.Trainer, pl_module: L.LightningModule, questions: list[RagQuestion]
    ) -> dict[str, Any]:
        step = trainer.global_step
        module_key = pl_module.untrained_score_key() if isinstance(pl_module, CachesUntrainedScore) else None
        start_key = (
            {"module": module_key, **self._key(trainer.datamodule, questions)}
            if step == 0 and module_key is not None
            else None
        )
        cached = self._read_cache(trainer, "start", start_key)
        if isinstance(cached, dict) and "metrics" in cached and "per_question" in cached:
            return {"metrics": cached["metrics"], "per_question": cached["per_question"], "source": "cache"}
        start = time.perf_counter()
        documents, source = self._current_documents(trainer, pl_module, questions)
        records = self.reader.score_sharded(trainer, questions, documents)
        row = {"metrics": row_metrics(records), "per_question": records, "source": source}
        row["seconds"] = round(time.perf_counter() - start, 2)
        self._write_cache(trainer, "start", start_key, row)
        return row

    # ---- the hook -------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._run_dir = Path(trainer.default_root_dir)
        self._reader(trainer, pl_module)
        if self._questions is None:
            self._questions = rag_questions(trainer.datamodule, self.max_questions)
        if self.references is None:
            self.references = self._reference_rows(trainer, self._questions)
            if trainer.is_global_zero:
                self._write_references()
        row = self._current_row(trainer, pl_module, self._questions)
        record = {"step": trainer.global_step, "top_k": self.top_k, **row}
        self.history.append({"step": record["step"], "metrics": row["metrics"]})
        for name, value in self.logged_metrics(row["metrics"]).items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=False)
        if trainer.is_global_zero:
            write_json_atomically(self._run_dir / "eval" / f"rag_step_{record['step']:06d}.json", record)
            rank_zero_info(
                f"[rag step {record['step']}] "
                + ", ".join(f"{m} {row['metrics'][m]:.4f}" for m in METRICS)
                + " | "
                + ", ".join(f"{k} nll {self.references[k]['metrics']['answer_nll']:.4f}" for k in REFERENCES)
            )

    def logged_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """``rag/<metric>`` of the current row and ``rag/ref/<row>/<metric>`` of the references."""
        logged = {f"rag/{m}": float(metrics[m]) for m in METRICS}
        for kind, row in (self.references or {}).items():
            logged.update({f"rag/ref/{kind}/{m}": float(row["metrics"][m]) for m in METRICS})
        return logged

    def _write_references(self) -> None:
        write_json_atomically(
            self._run_dir / "eval" / "rag_references.json",
            {"top_k": self.top_k, "lm": self._lm_description, "rows": self.references},
        )

    # ---- results.json ---------------------------------------------------------------------------------------
    def results_summary(self) -> dict[str, Any]:
        """``{"rag": {before, after, references, history, ...}}`` for ``results.json``: ``before`` is the
        step-0 row (read back from ``eval/rag_step_000000.json`` after a resume), ``after`` the last one."""
        if not self.history:
            return {}
        before = next((h["metrics"] for h in self.history if h["step"] == 0), None)
        if before is None and self._run_dir is not None:
            first = self._run_dir / "eval" / "rag_step_000000.json"
            before = json.loads(first.read_text())["metrics"] if first.exists() else None
        return {
            "rag": {
                "lm": self._lm_description,
                "top_k": self.top_k,
                "questions": len(self._questions or []),
                "before": before,
                "after": self.history[-1]["metrics"],
                "references": {k: row["metrics"] for k, row in (self.references or {}).items()},
                "history": [{"step": h["step"], **h["metrics"]} for h in self.history],
            }
        }
