"""Evaluation that scales: chunked search with running top-k, per-rank shards merged, a half-precision index,
the start's encodings cached, and LoRA merged for bf16 encoding — each against the full-matrix search it
replaces (and pytrec_eval for the metrics)."""

from __future__ import annotations

import lightning as L
import pytest
import pytrec_eval
import torch

from callbacks.encoding_cache import trainable_fingerprint
from callbacks.retrieval_eval import RetrievalEvaluation
from callbacks.sharded_search import encode_local_shard
from datamodules.retrieval import RetrievalDataModule
from lightning_modules.contrastive.module import ContrastiveModule
from lightning_modules.models.embedder import Embedder
from retrieval.search import chunked_top_k, merge_top_k


def full_matrix_top_k(queries: torch.Tensor, documents: torch.Tensor, k: int):
    """The search this replaces: one ``[Q, N]`` float32 score matrix, then topk."""
    return (queries.float() @ documents.float().T).topk(min(k, len(documents)), dim=1)


@pytest.mark.parametrize("k", [5, 100, 5000])
def test_chunked_search_equals_the_full_matrix_search(k):
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(37, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    for index in (documents, documents.half(), documents.bfloat16()):
        full = full_matrix_top_k(queries, index, k)
        scores, indices = chunked_top_k(queries, index, k, query_block=10, document_chunk=64)
        assert torch.equal(indices, full.indices), index.dtype
        torch.testing.assert_close(scores, full.values, rtol=1e-5, atol=1e-5)
        # faiss's own GEMM blocking may swap two scores equal to ~1e-7: same scores, same documents otherwise
        scores, indices = chunked_top_k(queries, index, k, query_block=10, document_chunk=64, use_faiss=True)
        every_score = queries @ index.float().T
        torch.testing.assert_close(every_score.gather(1, indices), full.values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores, full.values, rtol=1e-5, atol=1e-5)
        assert (indices == full.indices).float().mean() > 0.99, index.dtype


def test_per_rank_shards_merge_to_the_single_index_search():
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(23, 8, generator=generator)
    texts = [str(i) for i in range(23)]

    def encode(batch: list[str]) -> torch.Tensor:
        return vectors[[int(t) for t in batch]]

    queries = torch.randn(4, 8, generator=generator)
    full = full_matrix_top_k(queries, vectors, 10)
    for world in (2, 3, 5):
        scores = torch.empty(4, 0)
        indices = torch.empty(4, 0, dtype=torch.long)
        for rank in range(world):
            shard, offset = encode_local_shard(encode, texts, world, rank, torch.float32, piece=2)
            assert torch.equal(shard, vectors[offset : offset + len(shard)]), "padding rows are dropped"
            if len(shard):
                local = chunked_top_k(queries, shard, 10, document_chunk=3)
                scores, indices = merge_top_k(scores, indices, local[0], local[1] + offset, 10)
        assert torch.equal(indices, full.indices), world


def test_a_bad_index_dtype_stops_at_the_config_check():
    from omegaconf import OmegaConf

    from callbacks.retrieval_eval import RetrievalEvaluation
    from experiments.config_check import ConfigError, check_arguments_hook

    node = OmegaConf.create(
        {"_target_": "callbacks.retrieval_eval.RetrievalEvaluation", "index_dtype": "float8"}
    )
    with pytest.raises(ConfigError, match="callbacks.retrieval_eval: unknown index_dtype 'float8'"):
        check_arguments_hook("callbacks.retrieval_eval", node, RetrievalEvaluation)


def test_a_float16_index_refuses_values_beyond_its_range():
    with pytest.raises(ValueError, match="beyond float16's range: set callbacks.retrieval_eval.index_dtype"):
        encode_local_shard(lambda batch: torch.full((len(batch), 2), 1e6), ["a", "b"], 1, 0, torch.float16)


class CountingContrastive(ContrastiveModule):
    encoded_documents = 0

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        self.encoded_documents += len(texts)
        return super().encode_documents(texts, show_progress)


def evaluate(module: L.LightningModule, data: RetrievalDataModule, index_dtype: str, root) -> dict:
    evaluation = RetrievalEvaluation(cache_untrained=False, show_progress=False, index_dtype=index_dtype)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[evaluation],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        default_root_dir=str(root),
    )
    trainer.validate(module, datamodule=data, verbose=False)
    return evaluation.last


def test_evaluation_metrics_equal_pytrec_eval_on_the_full_matrix_search_and_the_start_is_encoded_once(
    tmp_path, tiny_llama_path
):
    torch.manual_seed(0)
    module = CountingContrastive(
        embedder={"name_or_path": tiny_llama_path, "max_length": 32}, eval_batch_size=8
    )
    data = RetrievalDataModule(tiny=True, batch_size=2, group_size=2)
    corpus, queries = data.load_corpus(), data.eval_queries()
    record = evaluate(module, data, "float32", tmp_path)
    documents = module.encode_documents([corpus.corpus[d].as_text() for d in corpus.doc_ids])
    query_vectors = module.encode_queries([q.text for q in queries])
    full = full_matrix_top_k(query_vectors, documents, 100)
    run = {
        q.query_id: {corpus.doc_ids[int(i)]: float(s) for s, i in zip(full.values[row], full.indices[row])}
        for row, q in enumerate(queries)
    }
    qrels = {q.query_id: corpus.qrels[data.eval_split][q.query_id] for q in queries}
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    mean = {m: sum(r[m] for r in reference.values()) / len(reference) for m in ("ndcg_cut_10", "recall_100")}
    assert record["metrics"]["ndcg@10"] == pytest.approx(mean["ndcg_cut_10"], abs=1e-6)
    assert record["metrics"]["recall@100"] == pytest.approx(mean["recall_100"], abs=1e-6)

    before = module.encoded_documents
    again = evaluate(module, data, "float32", tmp_path)  # unchanged start: its encodings come from the cache
    assert module.encoded_documents == before and again["run"] == record["run"]
    half = evaluate(module, data, "float16", tmp_path)  # another index dtype: encoded again, same ranking
    assert module.encoded_documents == before + len(corpus.doc_ids)
    assert half["metrics"] == pytest.approx(record["metrics"], abs=1e-3)
    fingerprint = trainable_fingerprint(module)
    with torch.no_grad():
        next(p for p in module.parameters() if p.requires_grad).add_(0.01)
    assert trainable_fingerprint(module) != fingerprint
    evaluate(module, data, "float32", tmp_path)  # a changed model never reads the start's encodings
    assert module.encoded_documents == before + 2 * len(corpus.doc_ids)


def test_bf16_encoding_merges_lora_into_the_base_weights(tiny_llama_path):
    torch.manual_seed(0)
    embedder = Embedder(tiny_llama_path, max_length=32, lora={"r": 4, "lora_alpha": 8})
    for name, parameter in embedder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    layer = embedder.backbone.base_model.model.layers[0].self_attn.q_proj
    expected = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    merged = embedder.merged_parameters_as(torch.float32)
    key = "backbone.base_model.model.layers.0.self_attn.q_proj.base_layer.weight"
    torch.testing.assert_close(merged[key], expected)
    texts = ["a short text", "a somewhat longer text about retrieval", "x"]
    fp32 = embedder.encode(texts, "document", precision="fp32")
    bf16 = embedder.encode(texts, "document", precision="bf16")
    with embedder.backbone.disable_adapter():
        base_only = embedder.encode(texts, "document", precision="fp32")
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.999
    assert (bf16 - fp32).abs().max() < (base_only - fp32).abs().max() / 4, "the LoRA update is applied"
    assert not embedder.backbone.base_model.model.layers[0].self_attn.q_proj.disable_adapters, (
        "adapters back on"
    )
