"""``make report`` builds one comparison table and plots from the run directories under an output root."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from experiments.report import build_report
from experiments.report_collect import collect
from experiments.run_dir import label_use_of


def metrics(ndcg: float) -> dict[str, float]:
    return {"ndcg@10": ndcg, "recall@10": ndcg + 0.1, "recall@100": 0.9, "mrr@10": ndcg - 0.05}


def fake_run(
    root: Path,
    experiment: str,
    method: str,
    curve: list[tuple[int, float]],
    mteb: dict[int, float] | None = None,
    config: dict | None = None,
    run_hash: str = "0123abcd",
) -> Path:
    run_dir = root / experiment / run_hash / "local"
    (run_dir / "eval").mkdir(parents=True)
    stored = {"name": experiment, "tiny_models": False, "data": {"path": "hotpotqa", "eval_split": "dev"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**stored, **(config or {})}))
    for step, ndcg in curve:
        (run_dir / "eval" / f"step_{step:06d}.json").write_text(
            json.dumps({"step": step, "split": "dev", "metrics": metrics(ndcg)})
        )
    for step, ndcg in (mteb or {}).items():
        (run_dir / "mteb").mkdir(exist_ok=True)
        record = {
            "step": step,
            "tasks": {"scifact-test": {"main_score": ndcg, "ndcg_at_10": ndcg, "recall_at_100": 0.8}},
            "mean": ndcg,
        }
        (run_dir / "mteb" / f"step_{step:06d}.json").write_text(json.dumps(record))
    results = {
        "experiment": experiment,
        "method": method,
        "start": "all-minilm-l6-v2 (mean pooling)",
        "candidates": "HotpotQA candidates",
        "label_use": "none (LM supervision)" if method != "contrastive" else "relevance labels (InfoNCE)",
        "budget": {"steps": curve[-1][0], "seconds_per_step": 1.5},
        "metrics": {"before": metrics(curve[0][1]), "after": metrics(curve[-1][1])},
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_report_builds_from_two_run_dirs(tmp_path):
    fake_run(tmp_path, "dream_minilm", "dream", [(0, 0.80), (10, 0.82), (20, 0.83)])
    fake_run(
        tmp_path,
        "contrastive_minilm",
        "contrastive",
        [(0, 0.80), (10, 0.86), (20, 0.90)],
        mteb={0: 0.60, 20: 0.65},
    )
    baseline = tmp_path / "eval" / "all-minilm-l6-v2"
    baseline.mkdir(parents=True)
    (baseline / "mteb_results.json").write_text(
        json.dumps(
            {
                "name": "all-minilm-l6-v2",
                "precision": "bf16",
                "tasks": {"scifact-test": {"main_score": 0.645, "ndcg_at_10": 0.645}},
            }
        )
    )

    paths = build_report(tmp_path)

    table = paths["table"].read_text()
    dev = table.split("## hotpotqa-dev")[1].split("## ")[0]
    rows = [line for line in dev.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    # the start embedder first (one row for both runs), then the contrastive baseline, then the other methods
    assert [r.split(" | ")[0] for r in rows] == [
        "| start: all-minilm-l6-v2 (mean pooling)",
        "| contrastive · contrastive_minilm",
        "| dream · dream_minilm",
    ]
    # the last step's scores, and Δ over the run's own start
    assert "| 0.9000 | 1.0000 | 0.9000 | 0.8500 | +0.1000 |" in rows[1]
    assert "| 0.8300 |" in rows[2] and "+0.0300" in rows[2]
    scifact = table.split("## mteb/scifact-test")[1]
    assert "baseline: all-minilm-l6-v2 (bf16) | none | 0 | – | 0.6450" in scifact
    assert "contrastive · contrastive_minilm" in scifact and "0.6500" in scifact and "+0.0500" in scifact
    with paths["csv"].open() as handle:
        long = list(csv.DictReader(handle))
    assert {
        "row": "dream · dream_minilm",
        "dataset": "hotpotqa-dev",
        "metric": "ndcg@10",
        "value": "0.830000",
    }.items() <= next(
        r for r in long if r["row"] == "dream · dream_minilm" and r["metric"] == "ndcg@10"
    ).items()
    for name in ("curves", "bars"):
        data = paths[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert paths["table"].parent == tmp_path / "report"
    # the report folder itself is never collected as a run
    assert len([r for r in collect(tmp_path, exclude=paths["table"].parent) if r.kind == "run"]) == 2


def test_report_names_a_broken_results_file(tmp_path):
    run_dir = tmp_path / "x" / "h" / "local"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text('{"experiment": "x",')
    with pytest.raises(ValueError, match=r"results\.json:1: not valid JSON"):
        build_report(tmp_path)
    (run_dir / "results.json").write_text('{"method": "dream"}')
    with pytest.raises(ValueError, match="missing key 'experiment'"):
        build_report(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to report"):
        build_report(tmp_path / "empty")


def test_report_merges_several_output_roots(tmp_path):
    fake_run(tmp_path / "lab_a", "contrastive_minilm", "contrastive", [(0, 0.80), (20, 0.90)])
    fake_run(tmp_path / "lab_b", "dream_minilm", "dream", [(0, 0.80), (20, 0.83)], mteb={0: 0.6, 20: 0.62})
    paths = build_report([tmp_path / "lab_a", tmp_path / "lab_b"], tmp_path / "out")
    table = paths["table"].read_text()
    dev = table.split("## hotpotqa-dev")[1].split("## ")[0]
    assert dev.count("| start: all-minilm-l6-v2 (mean pooling)") == 1  # one start row across both roots
    assert "contrastive · contrastive_minilm" in dev and "dream · dream_minilm" in dev
    assert "## mteb/scifact-test" in table and "+0.0200" in table.split("## mteb/scifact-test")[1]


def test_report_labels_runs_of_one_experiment_by_their_differing_config(tmp_path):
    """Runs of one experiment (in one root or two) are labelled by where they depart from the group's most
    common config, then by step count; where a run goes (output_root, threads) never counts."""
    fake_run(
        tmp_path / "a",
        "llm_embedder_tiny",
        "llm_embedder",
        [(0, 0.68), (60, 0.70)],
        config={"output_root": "/a", "threads": 1, "model": {"teacher": {"reward": "nll", "batch_size": 8}}},
    )
    fake_run(
        tmp_path / "b",
        "llm_embedder_tiny",
        "llm_embedder",
        [(0, 0.68), (60, 0.72)],
        config={
            "output_root": "/b",
            "threads": 2,
            "model": {"teacher": {"reward": "rank_aware", "batch_size": 8}},
        },
        run_hash="4567efab",
    )
    fake_run(
        tmp_path / "b",
        "llm_embedder_tiny",
        "llm_embedder",
        [(0, 0.68), (30, 0.69)],
        config={"output_root": "/b", "model": {"teacher": {"reward": "rank_aware", "batch_size": 8}}},
    )
    paths = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    dev = paths["table"].read_text().split("## hotpotqa-dev")[1]
    labels = [line.split(" | ")[0] for line in dev.splitlines() if "llm_embedder_tiny" in line]
    assert sorted(labels) == [
        "| llm_embedder · llm_embedder_tiny (30 steps)",  # the two rank_aware runs: the group's usual config
        "| llm_embedder · llm_embedder_tiny (60 steps)",
        "| llm_embedder · llm_embedder_tiny (model.teacher.reward=nll)",  # what departs from it
    ]
    assert all("output_root" not in label and "threads" not in label for label in labels)


def test_label_use_names_labels_switched_on_in_a_label_free_experiment():
    labelled = {"data": {"tasks": {"qa": {"use_labels": True}, "tool": {"use_labels": False}}}}
    assert label_use_of("none in the qa loss", labelled) == "labels (data.tasks.qa.use_labels=true)"
    assert label_use_of("none in the qa loss", {"data": {"tasks": {"qa": {"use_labels": False}}}}) == (
        "none in the qa loss"
    )
    assert label_use_of("relevance labels (InfoNCE)", labelled) == "relevance labels (InfoNCE)"


@pytest.mark.parametrize(
    ("overrides", "label_use", "candidates"),
    [
        ([], "none in the loss", "HotpotQA candidate paragraphs"),
        (["model.candidates=mined", "model.mine_with=bm25"], "none in the loss", "top-5 passages"),
    ],
)
def test_results_declare_what_the_run_did_not_what_the_experiment_file_says(overrides, label_use, candidates):
    """A mined DREAM run must not claim dataset groups that contain the gold paragraph (issue 17)."""
    from experiments.claims import GOLD_IN_CANDIDATES
    from experiments.run_results import declared
    from tests.helpers import compose_config

    meta = declared(compose_config(["exp=dream_tiny_minilm", *overrides]))
    assert meta["label_use"].startswith(label_use) and meta["candidates"].startswith(candidates)
    mined = bool(overrides)
    assert bool(GOLD_IN_CANDIDATES.search(meta["candidates"])) is not mined
    assert ("mined by BM25 (once), shuffled each step" in meta["candidates"]) is mined
    assert ("the candidates are mined from the corpus (no labels)" in meta["label_use"]) is mined


def test_llm_embedder_with_the_papers_hard_labels_is_not_called_label_free():
    from experiments.run_results import declared
    from tests.helpers import compose_config

    assert declared(compose_config(["exp=llm_embedder_tiny"]))["label_use"].startswith("none in the qa loss")
    paper = declared(compose_config(["exp=llm_embedder_tiny", "model.graded_order=positive_first"]))
    assert paper["label_use"] == "labels (model.graded_order=positive_first)"


def test_report_shows_a_label_control_run_as_label_use(tmp_path):
    data = {"path": "hotpotqa", "eval_split": "dev", "tasks": {"qa": {"use_labels": True}}}
    fake_run(tmp_path, "llm_embedder_tiny", "llm_embedder", [(0, 0.68), (60, 0.80)], config={"data": data})
    table = build_report([tmp_path], tmp_path / "out")["table"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| llm_embedder · llm_embedder_tiny"))
    assert row.split(" | ")[1] == "labels (data.tasks.qa.use_labels=true)"


def test_report_labels_a_removed_subtree_once():
    from experiments.report_collect import config_difference, differing_keys, flatten

    base = flatten({"data": {"tasks": {"qa": {"k": 5}, "tool": {"k": 8, "weight": 0.2}}}, "model": {"lr": 1}})
    no_tool = flatten({"data": {"tasks": {"qa": {"k": 5}}}, "model": {"lr": 1}})
    group = [base, base, no_tool]
    keys = differing_keys(group)
    assert keys == ["data.tasks.tool.k", "data.tasks.tool.weight"]
    assert config_difference(no_tool, group, keys) == ["~data.tasks.tool"]
    assert config_difference(base, group, keys) == []


def test_report_shows_rabtriever_reranking_with_its_references(tmp_path):
    """results.json["rerank"] → a rerank table: the student's row plus the first stage, teacher and random
    order as reference rows named after their run (two runs of one experiment keep theirs apart)."""
    for run_hash, teacher, lm in (("aaaa", 0.52, "smollm2"), ("bbbb", 0.80, "/runs/sft_teacher")):
        run_dir = fake_run(
            tmp_path,
            "rabtriever_tiny",
            "rabtriever",
            [(150, 0.01)],
            config={"model": {"lm": lm}},
            run_hash=run_hash,
        )
        results = json.loads((run_dir / "results.json").read_text())
        results["rerank"] = {
            "top_k": 10,
            "first_stage": {"name_or_path": "all-minilm-l6-v2"},
            "metrics": {
                "first_stage": metrics(0.85),
                "teacher_rerank": metrics(teacher),
                "student_rerank": metrics(teacher + 0.01),
                "random_rerank": metrics(0.51),
            },
        }
        (run_dir / "results.json").write_text(json.dumps(results))
    table = build_report(tmp_path)["table"].read_text()
    rerank = table.split("## hotpotqa-dev · rerank top-10 of all-minilm-l6-v2")[1]
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")[4]
        for line in rerank.splitlines()
        if line.startswith("| r")
    }
    sft = "rabtriever · rabtriever_tiny (model.lm=/runs/sft_teacher)"
    zero_shot = "rabtriever · rabtriever_tiny (model.lm=smollm2)"
    assert rows[f"reference: teacher reranking ({sft})"] == "0.8000"
    assert rows[f"reference: teacher reranking ({zero_shot})"] == "0.5200"
    assert rows[f"reference: random rerank ({zero_shot})"] == "0.5100"
    assert rows[f"reference: all-minilm-l6-v2 order ({sft})"] == "0.8500"
    assert rows[sft] == "0.8100" and rows[zero_shot] == "0.5300"
