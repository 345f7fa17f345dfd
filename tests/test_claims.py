"""``make report``'s claims table: verdicts by the stated rules on synthetic results, and the rag columns and
curves of runs whose run directory is gone (lab_results/ keeps only results.json copies)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from experiments.claims import chance_ndcg_at_10, claim_verdicts
from experiments.report import build_report, main
from experiments.report_collect import collect_run
from experiments.report_plots import curve_panels

REFS = {
    "none": {"answer_nll": 3.0, "em": 0.0, "f1": 0.05},
    "bm25": {"answer_nll": 2.5, "em": 0.1, "f1": 0.2},
    "oracle": {"answer_nll": 1.5, "em": 0.4, "f1": 0.5},
}


def rag(before: tuple[float, float], after: tuple[float, float], steps=(0, 10)) -> dict:
    rows = [{"answer_nll": nll, "em": em, "f1": em} for nll, em in (before, after)]
    return {
        "lm": {"name_or_path": "smollm2-135m-instruct"},
        "top_k": 3,
        "questions": 100,
        "before": rows[0],
        "after": rows[1],
        "references": REFS,
        "history": [{"step": s, **r} for s, r in zip(steps, rows)],
    }


def copy(folder: Path, name: str, method: str, start: str, ndcg: tuple[float, float], **extra) -> str:
    """A lab_results copy: results.json of a run whose run directory no longer exists."""
    results = {
        "experiment": name,
        "method": method,
        "start": start,
        "label_use": "none in the loss" if method != "contrastive" else "relevance labels",
        "candidates": "mined from the corpus (BM25, then the current embedder)",
        "run_dir": f"/gone/{name}",
        "eval_set": "hotpotqa-dev",
        "budget": {"steps": 10, "train_seconds": 1000.0, "seconds_per_step": 100.0},
        "metrics": {"before": {"ndcg@10": ndcg[0]}, "after": {"ndcg@10": ndcg[1]}},
        "eval_history": [{"step": 0, "ndcg@10": ndcg[0]}, {"step": 10, "ndcg@10": ndcg[1]}],
        **extra,
    }
    (folder / f"{name}.json").write_text(json.dumps(results))
    return f"{name}.json"


def lab(tmp_path: Path) -> Path:
    """Synthetic lab_results/ and its claims map: DREAM gains from both starts (holds); LLM-Embedder beats
    start and contrastive from SmolLM2 but not on EM from MiniLM (does not hold); the LLM2Vec-Gen teacher
    used labels (not measurable); no Rabtriever run listed (not measurable)."""
    folder = tmp_path / "lab_results"
    folder.mkdir()
    files = {
        "dream_label_free": {
            "smollm2": copy(folder, "dream_smollm", "dream", "smollm2", (0.15, 0.20)),
            "minilm": copy(folder, "dream_minilm", "dream", "minilm", (0.857, 0.90)),
        },
        "llm_embedder_rag": {
            "smollm2": copy(
                folder, "llme_s", "llm_embedder", "smollm2", (0.15, 0.2), rag=rag((2.4, 0), (2.0, 0.2))
            ),
            "minilm": copy(
                folder, "llme_m", "llm_embedder", "minilm", (0.85, 0.86), rag=rag((2.0, 0.2), (1.9, 0.2))
            ),
            "contrastive_smollm2": copy(
                folder, "con_s", "contrastive", "smollm2", (0.15, 0.3), rag=rag((2.4, 0), (2.2, 0.1))
            ),
            "contrastive_minilm": copy(
                folder, "con_m", "contrastive", "minilm", (0.85, 0.9), rag=rag((2.0, 0.2), (1.95, 0.2))
            ),
        },
        "llm2vec_gen_teacher": {
            "student": copy(
                folder, "l2vg", "llm2vec_gen", "smollm2", (0.0, 0.30), teacher_label_use="labels (MSMARCO)"
            ),
            "teacher": copy(folder, "teacher", "llm2vec", "smollm2", (0.0, 0.25)),
        },
        "rabtriever_student": {"run": None},
    }
    files["llm_embedder_rag"]["diagnosis"] = "the 135M teacher ranks below MiniLM"
    (folder / "claims.yaml").write_text(yaml.safe_dump(files))
    return folder / "claims.yaml"


def test_claims_table_gives_each_claim_its_verdict_by_the_rule(tmp_path):
    verdicts, files = claim_verdicts(lab(tmp_path))
    by_claim = {v.claim: v for v in verdicts}
    assert by_claim["dream_label_free"].verdict == "holds"
    assert "smollm2: nDCG@10 0.150 → 0.200 (Δ +0.050)" in by_claim["dream_label_free"].numbers
    llme = by_claim["llm_embedder_rag"]
    assert llme.verdict == "does not hold at this scale"
    assert llme.reason == "minilm: EM not ≥ 0.01 above the start's; minilm: EM not ≥ 0.01 above contrastive's"
    assert "oracle (gold paragraphs) NLL 1.500 EM 0.40" in llme.references
    assert llme.diagnosis == "the 135M teacher ranks below MiniLM"
    assert by_claim["dream_label_free"].diagnosis == ""
    assert by_claim["llm2vec_gen_teacher"].verdict == "not measurable here"
    assert "not unsupervised (label use: labels (MSMARCO))" in by_claim["llm2vec_gen_teacher"].reason
    assert by_claim["rabtriever_student"].verdict == "not measurable here"
    assert by_claim["rabtriever_student"].reason == "no result file listed for run"
    assert by_claim["contrastive_reference"].reason == "no result file listed for smollm2, minilm"
    assert len(files) == 8


def test_report_leads_with_claims_and_plots_curves_of_runs_without_run_dirs(tmp_path):
    claims_map = lab(tmp_path)
    empty = tmp_path / "runs"
    empty.mkdir()
    paths = build_report(empty, tmp_path / "out", claims_map)
    text = paths["table"].read_text()
    assert text.startswith("# Paper claims") and text.index("# Paper claims") < text.index("# Results")
    assert "| dream_label_free | DREAM: Dense Retrieval Embeddings" in text and "**holds**" in text
    dev = text.split("## hotpotqa-dev")[1]
    assert (
        dev.count("| rag reference: oracle (gold paragraphs) (top-3, smollm2-135m-instruct, 100 questions)")
        == 1
    )
    llme = next(line for line in dev.splitlines() if line.startswith("| llm_embedder · llme_s"))
    # ndcg@10 … Δ nDCG@10 | rag/answer_nll | rag/em | rag/f1 | Δ rag/answer_nll | Δ rag/em | Δ rag/f1
    assert llme.endswith("| 2.0000 | 0.2000 | 0.2000 | -0.4000 | +0.2000 | +0.2000 |")
    rows = [collect_run(claims_map.parent / name)[0] for name in ("llme_s.json", "dream_smollm.json")]
    assert rows[0].rag_curves == {"hotpotqa-dev": [(0, 2.4), (10, 2.0)]}
    assert rows[1].curves == {"hotpotqa-dev": [(0, 0.15), (10, 0.2)]}
    assert curve_panels(rows) == [("ndcg@10", "hotpotqa-dev"), ("rag/answer_nll", "hotpotqa-dev")]
    assert paths["curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "holds" in paths["claims_csv"].read_text()
    assert "| the 135M teacher ranks below MiniLM |" in text


def test_a_claims_map_naming_an_unknown_role_is_one_error_line(tmp_path, capsys):
    claims_map = tmp_path / "claims.yaml"
    claims_map.write_text(yaml.safe_dump({"dream_label_free": {"qwen": "x.json"}}))
    (tmp_path / "runs").mkdir()
    assert main(["--output-root", str(tmp_path / "runs"), "--claims", str(claims_map)]) == 2
    assert capsys.readouterr().err == (
        f"error: {claims_map}: dream_label_free.qwen: unknown role (roles: smollm2, minilm)\n"
    )


def test_chance_ndcg_matches_every_ranking_averaged():
    """2 relevant documents among 12: the mean nDCG@10 over all placements of the relevant pair."""
    ideal = 1 + 1 / math.log2(3)
    placements = list(itertools.combinations(range(1, 13), 2))
    mean = sum(sum(1 / math.log2(r + 1) for r in pair if r <= 10) / ideal for pair in placements) / len(
        placements
    )
    assert chance_ndcg_at_10(12, 2) == pytest.approx(mean)


def test_label_free_claim_is_not_measurable_when_the_candidate_groups_hold_the_gold():
    from experiments.claims import gain_over_start

    leaky = {
        "label_use": "none in the loss",
        "candidates": "HotpotQA candidate paragraphs (1 gold + 4 others; the set contains the gold ones)",
        "metrics": {"before": {"ndcg@10": 0.80}, "after": {"ndcg@10": 0.85}},
    }
    numbers, _, verdict, reason = gain_over_start({"minilm": leaky}, {"min_gain": 0.01, "label_free": True})
    assert (numbers, verdict) == ("minilm: nDCG@10 0.800 → 0.850 (Δ +0.050)", "not measurable here")
    assert reason == "minilm: the candidate groups contain the gold paragraph (labels enter through them)"
    *_, verdict, _ = gain_over_start({"minilm": leaky}, {"min_gain": 0.01, "label_free": False})
    assert verdict == "holds"
