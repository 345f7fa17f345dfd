"""Our metrics equal pytrec_eval's on the same run (trec_eval semantics, ties included)."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from retrieval.metrics import evaluate_run


def random_run_and_qrels(seed: int):
    rng = random.Random(seed)
    docs = [f"d{i:03d}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 4))}
        if q % 7 == 0:
            qrels[qid][rng.choice(docs)] = 0  # judged non-relevant
        scores = {d: round(rng.random(), 2) for d in rng.sample(docs, 150)}  # rounding creates ties
        for d in qrels[qid]:
            if rng.random() < 0.6:
                scores[d] = round(rng.uniform(0.5, 1.0), 2)
        run[qid] = scores
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval(seed):
    run, qrels = random_run_and_qrels(seed)
    # our run is the top 100 per query, as the evaluation callback produces
    top100 = {
        q: dict(sorted(s.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:100]) for q, s in run.items()
    }
    ours, per_query = evaluate_run(top100, qrels)

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100"})
    ref = evaluator.evaluate(top100)
    top10 = {
        q: dict(sorted(s.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10])
        for q, s in top100.items()
    }
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    for qid in qrels:
        assert per_query[qid]["ndcg@10"] == pytest.approx(ref[qid]["ndcg_cut_10"], abs=1e-4)
        assert per_query[qid]["recall@10"] == pytest.approx(ref[qid]["recall_10"], abs=1e-4)
        assert per_query[qid]["recall@100"] == pytest.approx(ref[qid]["recall_100"], abs=1e-4)
        assert per_query[qid]["mrr@10"] == pytest.approx(rr[qid]["recip_rank"], abs=1e-4)
    mean = lambda key, table: sum(v[key] for v in table.values()) / len(table)  # noqa: E731
    assert ours["ndcg@10"] == pytest.approx(mean("ndcg_cut_10", ref), abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(mean("recip_rank", rr), abs=1e-4)


def test_callback_run_file_matches_pytrec_eval(tmp_path):
    """The evaluation callback's written run file, scored by pytrec_eval, gives the logged numbers."""
    import json

    from tests.helpers import run_experiment

    results = run_experiment(["exp=default", "debug=tiny"], tmp_path)
    run_dir = results["run_dir"]
    step = results["budget"]["steps"]
    eval_json = json.loads(open(f"{run_dir}/eval/step_{step:06d}.json").read())
    run: dict = {}
    for line in open(f"{run_dir}/eval/run_step_{step:06d}.trec"):
        qid, _, doc, _rank, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    from datamodules.beir import load_beir_folder
    from datamodules.paths import resolve_data_path

    qrels = load_beir_folder(resolve_data_path("tiny_hotpotqa"), ["dev"]).qrels["dev"]
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert eval_json["metrics"]["ndcg@10"] == pytest.approx(
        sum(v["ndcg_cut_10"] for v in ref.values()) / len(ref), abs=1e-4
    )
    assert eval_json["metrics"]["recall@100"] == pytest.approx(
        sum(v["recall_100"] for v in ref.values()) / len(ref), abs=1e-4
    )
    assert results["metrics"]["after"]["ndcg@10"] == pytest.approx(eval_json["metrics"]["ndcg@10"])
