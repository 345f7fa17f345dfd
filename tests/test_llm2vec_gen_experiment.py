"""LLM2Vec-Gen end to end: unlabeled-query data, the tiny experiment through the evaluation callback, decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.errors import DataFormatError
from datamodules.unlabeled_queries import QUERY_SETS, UnlabeledQueryDataModule, load_unlabeled_queries
from tests.helpers import compose_config, run_experiment


def test_vendored_nq_open_sample_loads_and_subsamples_deterministically():
    queries = load_unlabeled_queries(QUERY_SETS["nq_open"])
    assert 0 < len(queries) <= 1000 and len({q.query_id for q in queries}) == len(queries)
    picks = []
    for _ in range(2):
        datamodule = UnlabeledQueryDataModule(queries="nq_open", max_train_queries=50, batch_size=8, seed=3)
        datamodule.setup("fit")
        picks.append([q.query_id for q in datamodule.train_queries])
    assert picks[0] == picks[1] and len(picks[0]) == 50
    batch = next(iter(datamodule.train_dataloader()))
    assert len(batch.queries) == len(batch.query_ids) == 8 and batch.group_size == 0, "queries only"
    assert datamodule.eval_queries(), "the HotpotQA eval split comes with the unlabeled queries"


def test_bad_query_files_name_file_line_and_field(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b"}\n')
    with pytest.raises(DataFormatError, match=r"queries.jsonl:2: field 'text': missing"):
        load_unlabeled_queries(path)
    path.write_text('{"_id": "a", "text": "fine"}\n{"_id": "a", "text": "again"}\n')
    with pytest.raises(DataFormatError, match=r":2: field '_id': duplicate query id 'a' \(first on line 1\)"):
        load_unlabeled_queries(path)


def test_tiny_experiment_trains_evaluates_and_decodes(tmp_path):
    from experiments.decode import decode_texts

    overrides = ["exp=llm2vec_gen_tiny", "debug=tiny", "model.generation.max_new_tokens=4"]
    results = run_experiment(overrides, tmp_path)
    after = results["metrics"]["after"]
    assert 0.0 <= after["ndcg@10"] <= 1.0 and set(after) >= {"ndcg@10", "recall@100"}
    run_dir = Path(results["run_dir"])
    assert (run_dir / "generation.json").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    decoded = decode_texts(["--ckpt", str(run_dir), "--text", "who wrote the song", "--max-new-tokens", "3"])
    assert len(decoded) == 1 and isinstance(decoded[0], str)


@pytest.mark.parametrize("experiment", ["llm2vec_gen_qwen3_0.6b", "llm2vec_gen_qwen2.5_1.5b"])
def test_cluster_experiments_keep_the_reference_recipe(experiment):
    cfg = compose_config([f"exp={experiment}"])
    assert cfg.model.num_special_tokens == 10
    assert cfg.model.reconstruction_weight == cfg.model.alignment_weight == 1.0
    assert cfg.data.batch_size == 32 and cfg.trainer.max_steps == 5000
    assert cfg.model.frozen_lm.dtype == "bfloat16"
