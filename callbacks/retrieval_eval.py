"""Retrieval evaluation at validation time: encode the corpus, exact top-k search, trec_eval metrics.

Logs ``val/ndcg@10``, ``val/recall@10``, ``val/recall@100``, ``val/mrr@10`` (usable as the checkpoint
monitor) and writes ``<run>/eval/step_<N>.json`` (metrics and per-query scores) plus a TREC run file.
The score before training is cached per (model, pooling, max length, data, split) so it is computed once.

Under DDP/FSDP every rank encodes an equal-sized shard of the corpus and keeps it (``index_dtype``, half
precision by default), the queries are all-gathered, each rank searches its shard in chunks and the
per-rank top-k are merged (``callbacks/sharded_search.py``): no rank holds the full corpus matrix, every
rank logs the same metrics (so checkpointing can monitor them) and every rank runs the same number of
forward passes (FSDP's collectives never wait on a rank that has stopped). Under FSDP the encoding runs
through the wrapped model's ``forward`` so the sharded parameters are gathered. The start's corpus
encodings are cached (``callbacks/encoding_cache.py``). A module's own ``retrieve()`` hook runs on the
whole corpus on every rank.

``training_corpus_size``: evaluations during training (after step 0, before the last step) search a fixed
sub-corpus of that many documents (every document judged for the evaluation queries plus a seeded draw of
the rest; ``RetrievalCorpus.subsample``); the start, the final step and ``trainer.validate`` search the
whole corpus. null (default): always the whole corpus. The record says which (``num_documents``,
``corpus``); subsampled scores are higher than full-corpus ones and are not comparable with them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from callbacks.encoding_cache import encodings_path
from callbacks.sharded_search import (  # noqa: F401 (shard_bounds, encode_sharded: used via this module)
    encode_local_shard,
    encode_sharded,
    index_dtype_of,
    shard_bounds,
    sharded_top_k,
)
from callbacks.untrained_cache import read_untrained_score, write_untrained_score
from datamodules.protocols import corpus_source, source_name
from datamodules.records import RetrievalCorpus
from lightning_modules.distributed import call_through_strategy
from lightning_modules.protocols import CachesUntrainedScore, CorpusRetriever, TextEncoder
from retrieval.cache import cache_key, cached_tensors, write_json_atomically
from retrieval.metrics import evaluate_run, ranked


class RetrievalEvaluation(L.Callback):
    def __init__(
        self,
        top_k: int = 100,
        cache_untrained: bool = True,
        use_faiss: bool = False,
        show_progress: bool = True,
        index_dtype: str = "float16",
        cache_encodings: bool = True,
        training_corpus_size: int | None = None,
    ):
        self.check_arguments(index_dtype, training_corpus_size)  # fails at construction, not at an evaluation
        self.top_k = top_k
        self.cache_untrained = cache_untrained
        self.use_faiss = use_faiss
        self.show_progress = show_progress
        self.index_dtype = index_dtype
        self.cache_encodings = cache_encodings
        self.training_corpus_size = training_corpus_size
        self._sub_corpus: tuple[tuple[int, str, tuple[str, ...]], RetrievalCorpus] | None = None
        self.history: list[dict[str, Any]] = []

    @classmethod
    def check_arguments(
        cls, index_dtype: str = "float16", training_corpus_size: int | None = None, **_: Any
    ) -> None:
        """The config check's hook: a bad ``index_dtype`` or corpus size stops the run before any model loads."""
        index_dtype_of(index_dtype)
        if training_corpus_size is not None and training_corpus_size < 1:
            raise ValueError(f"training_corpus_size must be >= 1 or null, got {training_corpus_size}")

    def subsamples_at(self, trainer: L.Trainer) -> bool:
        """Whether this evaluation searches the training-time sub-corpus: inside ``fit``, after step 0 and
        before the last step (``max_steps``)."""
        if self.training_corpus_size is None or trainer.state.fn != TrainerFn.FITTING:
            return False
        last = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else float("inf")
        return 0 < trainer.global_step < last

    def sub_corpus(self, corpus: RetrievalCorpus, split: str, query_ids: list[str]) -> RetrievalCorpus:
        """The fixed training-time sub-corpus, drawn once per (corpus, split, queries) and then reused."""
        key = (id(corpus), split, tuple(query_ids))
        if self._sub_corpus is None or self._sub_corpus[0] != key:
            self._sub_corpus = (key, corpus.subsample(split, query_ids, self.training_corpus_size))
        return self._sub_corpus[1]

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def ranking(self, step: int) -> dict[str, list[str]] | None:
        """Each query's retrieved document ids, best first (trec_eval order), from the evaluation at ``step``;
        None when the last evaluation ran at another step or did not rank (a cached untrained score).
        Later callbacks at the same validation (``callbacks.rag_eval``) reuse it instead of re-encoding."""
        record = self.last
        if record is None or record.get("step") != step or "run" not in record:
            return None
        return {qid: ranked(docs) for qid, docs in record["run"].items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        record = self._cached_untrained(trainer, pl_module) if step == 0 else None
        if trainer.world_size > 1:  # rank 0 decides, so no rank skips the collectives of an evaluation
            record = trainer.strategy.broadcast(record, src=0)
        if record is None:
            record = self.evaluate(trainer, pl_module)
            if step == 0:
                self._store_untrained(trainer, pl_module, record)
        record = {**record, "step": step}
        self.history.append(record)
        for name, value in record["metrics"].items():
            pl_module.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
        if trainer.is_global_zero:
            self._write(trainer, record)
            summary = ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
            rank_zero_info(f"[eval step {step}{' cached' if record.get('cached') else ''}] {summary}")

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        datamodule = corpus_source(trainer.datamodule, "retrieval evaluation")
        corpus = datamodule.load_corpus()
        queries = datamodule.eval_queries()
        qrels = {q.query_id: corpus.qrels[datamodule.eval_split][q.query_id] for q in queries}
        subsample = self.subsamples_at(trainer)
        if subsample:
            corpus = self.sub_corpus(corpus, datamodule.eval_split, [q.query_id for q in queries])
        doc_ids = corpus.doc_ids
        start = time.perf_counter()
        show = self.show_progress and trainer.is_global_zero
        scores, indices = retrieve_top_k(
            trainer,
            pl_module,
            [q.text for q in queries],
            corpus,
            self.top_k,
            self.use_faiss,
            show,
            index_dtype=self.index_dtype,
            cache_encodings=self.cache_encodings,
        )
        seconds = time.perf_counter() - start
        run = {
            q.query_id: {doc_ids[int(i)]: float(s) for s, i in zip(scores[row], indices[row])}
            for row, q in enumerate(queries)
        }
        metrics, per_query = evaluate_run(run, qrels)
        return {
            "metrics": metrics,
            "per_query": per_query,
            "run": run,
            "seconds": seconds,
            "num_queries": len(queries),
            "num_documents": len(doc_ids),
            "corpus": "training subsample" if subsample else "full",
            "split": datamodule.eval_split,
        }

    # ---- untrained-score cache ---------------------------------------------------------------------------
    def _cache_key(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        key = pl_module.untrained_score_key() if isinstance(pl_module, CachesUntrainedScore) else None
        if not self.cache_untrained or key is None:
            return None
        dm = corpus_source(trainer.datamodule, "retrieval evaluation")
        corpus = dm.load_corpus()
        full = {
            "module": key,
            "data": source_name(dm),
            "split": dm.eval_split,
            "queries": [q.query_id for q in dm.eval_queries()],
            "corpus": len(corpus.corpus),
            "top_k": self.top_k,
            # only when not float32, so the cached scores of a float32 index keep their keys
            **({"index_dtype": self.index_dtype} if self.index_dtype != "float32" else {}),
        }
        return cache_key(full)

    def _cached_untrained(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any] | None:
        key = self._cache_key(trainer, pl_module)
        metrics = read_untrained_score(key) if key is not None else None  # damaged entries are recomputed
        return {"metrics": metrics, "cached": True, "seconds": 0.0} if metrics is not None else None

    def _store_untrained(
        self, trainer: L.Trainer, pl_module: L.LightningModule, record: dict[str, Any]
    ) -> None:
        key = self._cache_key(trainer, pl_module)
        if key is None or not trainer.is_global_zero:
            return
        write_untrained_score(key, record["metrics"], pl_module.untrained_score_key())

    def _write(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        out = Path(trainer.default_root_dir) / "eval"
        step = record["step"]
        summary = {k: v for k, v in record.items() if k != "run"}
        write_json_atomically(out / f"step_{step:06d}.json", summary)
        if "run" in record:
            lines = []
            for qid, docs in record["run"].items():
                for rank, (doc, score) in enumerate(
                    sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True), 1
                ):
                    lines.append(f"{qid} Q0 {doc} {rank} {score:.6f} lsr")
            (out / f"run_step_{step:06d}.trec").write_text("\n".join(lines) + "\n")


def retrieve_top_k(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    query_texts: list[str],
    corpus: RetrievalCorpus,
    k: int,
    use_faiss: bool = False,
    show_progress: bool = False,
    index_dtype: str = "float16",
    cache_encodings: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and corpus indices ``[Q, k]`` of each query's top-k under the current model (every rank gets
    all of them): the module's own ``retrieve()`` when it is a :class:`CorpusRetriever`, else each rank's
    corpus shard encoded (a :class:`TextEncoder`) and searched, the ranks' top-k merged (mteb's split
    between a search model and an encoder). ``index_dtype``: how each rank stores its shard."""
    doc_ids = corpus.doc_ids
    if isinstance(pl_module, CorpusRetriever):
        return call_through_strategy(
            trainer, pl_module, "retrieve", query_texts, [corpus.corpus[d] for d in doc_ids], k
        )
    if not isinstance(pl_module, TextEncoder):
        raise TypeError(
            "retrieval evaluation needs a module that encodes texts (encode_queries / encode_documents) or "
            f"retrieves itself (retrieve), not {type(pl_module).__name__}"
        )
    texts = [corpus.corpus[d].as_text() for d in doc_ids]
    documents, offset = corpus_shard(trainer, pl_module, texts, index_dtype, cache_encodings, show_progress)
    queries = encode_sharded(trainer, pl_module, "encode_queries", query_texts, show_progress)
    return sharded_top_k(trainer, queries, documents, offset, len(doc_ids), k, use_faiss)


def corpus_shard(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    texts: list[str],
    index_dtype: str,
    use_cache: bool,
    show_progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """This rank's encoded corpus shard in ``index_dtype`` and its first row's corpus index; at step 0
    read from (or written to) the encoding cache when ``use_cache``. Every rank encodes when one misses."""

    def encode() -> dict[str, torch.Tensor]:
        documents, offset = encode_local_shard(
            lambda shard: call_through_strategy(trainer, pl_module, "encode_documents", shard, show_progress),
            texts,
            trainer.world_size,
            trainer.global_rank,
            index_dtype_of(index_dtype),
        )
        return {"documents": documents, "offset": torch.tensor(offset)}

    def every_rank(found: bool) -> bool:
        return trainer.strategy.reduce_boolean_decision(found, all=True)

    path = encodings_path(trainer, pl_module, texts, index_dtype) if use_cache else None
    entry = encode() if path is None else cached_tensors(path, encode, every_rank=every_rank)
    return entry["documents"], int(entry["offset"])
