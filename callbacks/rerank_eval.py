"""Teacher and student as rerankers of a first-stage embedder's top-k, next to that embedder's own score.

:class:`RerankEvaluation` runs at every validation after :class:`callbacks.RetrievalEvaluation` (which
scores the student over the whole corpus). The first stage (the *starting embedder*) and the teacher do
not change during training: they are computed once per process and cached on disk keyed by embedder,
LM, prompt, data and k. The student's reranking of the same candidates is recomputed each time.
A ``random_rerank`` entry (the same candidates in random order, averaged over seeded permutations) is the
floor a reranker has to beat: with two gold paragraphs in a top-10 that order alone scores well above zero.
Logs ``val/first_stage_ndcg@10``, ``val/teacher_rerank_ndcg@10``, ``val/student_rerank_ndcg@10`` and writes
``<run>/eval/rerank_step_<N>.json``; :meth:`RerankEvaluation.results_summary` goes into ``results.json``.
Reranked runs hold only k documents per query, so their recall@100 is recall@k.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from datamodules.protocols import corpus_source, source_name
from lightning_modules.distributed import call_through_strategy, max_over_ranks
from lightning_modules.models.embedder import Embedder
from lightning_modules.models.registry import resolve_model_path
from lightning_modules.rabtriever.module import RabtrieverModule
from lightning_modules.rabtriever.reranker import rerank_top_k, teacher_pair_scorer
from retrieval.cache import cache_key, cache_root, cached_tensors, write_json_atomically
from retrieval.metrics import evaluate_run
from retrieval.search import exact_top_k


def _cached(
    name: str, key: Any, compute: Callable[[], dict[str, torch.Tensor]], agree: bool = False
) -> dict[str, Any]:
    """``compute()`` → dict of tensors, through the checksummed ``<cache>/rabtriever/<name>-<key>.checked``.

    ``agree``: use the entry only if every rank finds it intact (``compute`` runs collective LM passes under
    FSDP: all ranks compute or none does)."""
    path = cache_root() / "rabtriever" / f"{name}-{cache_key(key)[:20]}.checked"
    every_rank = (lambda found: max_over_ranks(0 if found else 1) == 0) if agree else None
    return dict(cached_tensors(path, compute, every_rank))


class RerankEvaluation(L.Callback):
    """Evaluate first stage, teacher reranking and student reranking on the evaluation split.

    Args:
        first_stage: :class:`Embedder` keyword arguments of the starting embedder whose top-k is reranked.
        top_k: candidates reranked per query.
        encode_batch_size / encode_precision: first-stage encoding settings.
        teacher: also rerank with the teacher (the expensive part: ``Q × k`` LM passes, cached on disk).
    """

    def __init__(
        self,
        first_stage: dict[str, Any],
        top_k: int = 20,
        encode_batch_size: int = 64,
        encode_precision: str = "fp32",
        teacher: bool = True,
    ):
        self.first_stage = dict(first_stage)
        self.top_k = top_k
        self.encode_batch_size = encode_batch_size
        self.encode_precision = encode_precision
        self.teacher = teacher
        self._fixed: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm = corpus_source(trainer.datamodule, "rerank evaluation")
        if not isinstance(pl_module, RabtrieverModule):
            raise TypeError(f"RerankEvaluation evaluates a RabtrieverModule, not {type(pl_module).__name__}")
        corpus = dm.load_corpus()
        queries = dm.eval_queries()
        query_ids, query_texts = [q.query_id for q in queries], [q.text for q in queries]
        doc_ids = corpus.doc_ids
        doc_texts = [corpus.corpus[d].as_text() for d in doc_ids]
        qrels = {q: corpus.qrels[dm.eval_split][q] for q in query_ids}
        if self._fixed is None:
            data_key = {
                "data": source_name(dm),
                "split": dm.eval_split,
                "queries": query_ids,
                "documents": cache_key(doc_ids)[:20],
            }
            # under FSDP inside the wrapped forward, where the sharded LM is usable
            fixed = call_through_strategy(
                trainer, pl_module, self._first_stage_and_teacher, pl_module, query_texts, doc_texts, data_key
            )
            self._fixed = self._with_metrics(fixed, query_ids, doc_ids, qrels)
        candidates = self._fixed["first_stage"]["indices"]
        start = time.perf_counter()
        student = call_through_strategy(
            trainer, pl_module, student_rerank_scores, pl_module, query_texts, doc_texts, candidates
        )
        order = student.argsort(dim=1, descending=True, stable=True)
        student_run = to_run(query_ids, doc_ids, student.gather(1, order), candidates.gather(1, order))
        metrics = {name: entry["metrics"] for name, entry in self._fixed.items()}
        metrics["student_rerank"] = evaluate_run(student_run, qrels)[0]
        seconds = {name: entry["seconds"] for name, entry in self._fixed.items()}
        self._record(
            trainer, pl_module, metrics, seconds | {"student_rerank": round(time.perf_counter() - start, 2)}
        )

    def _with_metrics(
        self,
        fixed: dict[str, Any],
        query_ids: list[str],
        doc_ids: list[str],
        qrels: dict[str, dict[str, int]],
    ) -> dict[str, Any]:
        """The first stage's and the teacher's metrics, and the random-order floor on the same candidates."""
        for entry in fixed.values():
            entry["metrics"] = evaluate_run(
                to_run(query_ids, doc_ids, entry["scores"], entry["indices"]), qrels
            )[0]
        fixed["random_rerank"] = {
            "metrics": random_order_metrics(query_ids, doc_ids, fixed["first_stage"]["indices"], qrels),
            "seconds": 0.0,
        }
        return fixed

    def _record(
        self,
        trainer: L.Trainer,
        pl_module: RabtrieverModule,
        metrics: dict[str, dict[str, float]],
        seconds: dict[str, float],
    ) -> None:
        record = {
            "step": trainer.global_step,
            "top_k": self.top_k,
            "first_stage": self.first_stage,
            "metrics": metrics,
            "seconds": seconds,
            "document_state_seconds": pl_module.document_state_seconds,
        }
        self.history.append(record)
        for name, values in metrics.items():
            pl_module.log(f"val/{name}_ndcg@10", values["ndcg@10"], rank_zero_only=False)
        if trainer.is_global_zero:
            write_json_atomically(
                Path(trainer.default_root_dir) / "eval" / f"rerank_step_{trainer.global_step:06d}.json",
                record,
            )
            rank_zero_info(
                "[rerank eval] " + ", ".join(f"{n} ndcg@10 {m['ndcg@10']:.4f}" for n, m in metrics.items())
            )

    def results_summary(self) -> dict[str, Any]:
        """The last record (for ``results.json``): first stage, teacher and student reranking metrics."""
        return {"rerank": self.history[-1]} if self.history else {}

    def _first_stage_and_teacher(
        self, pl_module: RabtrieverModule, query_texts: list[str], doc_texts: list[str], data_key: dict
    ) -> dict[str, Any]:
        key = {
            "first_stage": self.first_stage,
            "resolved": resolve_model_path(
                self.first_stage["name_or_path"], self.first_stage.get("tiny", False)
            ),  # differs under debug=tiny
            "precision": self.encode_precision,
            "k": self.top_k,
            **data_key,
        }

        def encode() -> dict[str, torch.Tensor]:
            start = time.perf_counter()
            embedder = Embedder(**self.first_stage)
            documents = embedder.encode_documents(
                doc_texts, batch_size=self.encode_batch_size, precision=self.encode_precision
            )
            queries = embedder.encode_queries(
                query_texts, batch_size=self.encode_batch_size, precision=self.encode_precision
            )
            scores, indices = exact_top_k(queries, documents, self.top_k)
            return {
                "scores": scores,
                "indices": indices,
                "seconds": torch.tensor(time.perf_counter() - start),
            }

        fixed = {"first_stage": _cached("first-stage", key, encode)}
        if self.teacher:
            lm = pl_module.lm
            teacher_key = {
                **key,
                "lm": pl_module.lm_identity(),
                "prompt": repr(lm.prompt),
                "lm_precision": pl_module.lm_precision,
                "K": lm.num_document_states,
            }

            def teacher() -> dict[str, torch.Tensor]:
                start = time.perf_counter()
                scorer = teacher_pair_scorer(lm, pl_module.lm_batch_size, pl_module.lm_precision)
                scores, indices = rerank_top_k(
                    scorer, query_texts, doc_texts, fixed["first_stage"]["indices"]
                )
                return {
                    "scores": scores,
                    "indices": indices,
                    "seconds": torch.tensor(time.perf_counter() - start),
                }

            fixed["teacher_rerank"] = _cached(
                "teacher-rerank", teacher_key, teacher, agree=pl_module.lm_is_sharded()
            )
        for entry in fixed.values():
            entry["seconds"] = round(float(entry["seconds"]), 2)
        return fixed


@torch.no_grad()
def student_rerank_scores(
    pl_module: L.LightningModule, query_texts: list[str], doc_texts: list[str], candidates: torch.Tensor
) -> torch.Tensor:
    """``[Q, k]`` student scores (CPU) of each query's first-stage ``candidates`` (corpus indices)."""
    stored = pl_module.corpus_states(doc_texts)
    query_states = pl_module.query_states(query_texts)
    scores = pl_module.student_scores(query_states[:, None], stored[candidates].to(pl_module.device))
    return scores.float().cpu()


def to_run(
    query_ids: list[str], doc_ids: list[str], scores: torch.Tensor, indices: torch.Tensor
) -> dict[str, dict[str, float]]:
    """A trec-style run ``{query_id: {doc_id: score}}`` from ``[Q, k]`` scores and corpus indices."""
    return {
        q: {doc_ids[int(i)]: float(s) for s, i in zip(scores[row], indices[row])}
        for row, q in enumerate(query_ids)
    }


def random_order_metrics(
    query_ids: list[str],
    doc_ids: list[str],
    candidates: torch.Tensor,
    qrels: dict[str, dict[str, int]],
    permutations: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of the ``[Q, k]`` candidate lists put in random order, averaged over ``permutations`` seeded
    shuffles: what a reranker scores when its scores carry no information."""
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    ranks = torch.arange(candidates.shape[1], 0, -1, dtype=torch.float32).expand(len(query_ids), -1)
    for _ in range(permutations):
        order = torch.stack([torch.randperm(candidates.shape[1], generator=generator) for _ in query_ids])
        metrics = evaluate_run(to_run(query_ids, doc_ids, ranks, candidates.gather(1, order)), qrels)[0]
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value / permutations
    return totals
