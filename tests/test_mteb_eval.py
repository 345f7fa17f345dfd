"""The mteb wrapper, local BEIR tasks and the MTEB callback agree with the foundation's retrieval evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mteb.types import PromptType

from callbacks.mteb_eval import MTEBCallback, run_mteb, summarize
from callbacks.retrieval_eval import RetrievalEvaluation
from datamodules.errors import DataFormatError
from datamodules.mteb_tasks import (
    LocalBEIRRetrieval,
    MTEBTaskUnavailableError,
    preload,
    resolve_tasks,
    split_specs,
)
from datamodules.retrieval import RetrievalDataModule
from lightning_modules.base import RetrieverModule
from lightning_modules.models.embedder import Embedder
from lightning_modules.mteb_encoder import MTEBEncoder

METRIC_PAIRS = {
    "ndcg@10": "ndcg_at_10",
    "recall@10": "recall_at_10",
    "recall@100": "recall_at_100",
    "mrr@10": "mrr_at_10",
}


def foundation_metrics(module: RetrieverModule, datamodule: RetrievalDataModule) -> dict[str, float]:
    """What the training-time RetrievalEvaluation callback computes on this module and data."""
    single = SimpleNamespace(root_device=torch.device("cpu"))  # one process: the search runs on CPU
    trainer = SimpleNamespace(
        datamodule=datamodule, world_size=1, global_rank=0, strategy=single, global_step=0
    )
    return RetrievalEvaluation(show_progress=False, cache_encodings=False).evaluate(trainer, module)[
        "metrics"
    ]


def assert_same_scores(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for name, mteb_name in METRIC_PAIRS.items():
        assert theirs[mteb_name] == pytest.approx(ours[name], abs=1e-5), name  # mteb rounds to 5 decimals


@pytest.fixture
def tiny_module(tiny_bert_path) -> RetrieverModule:
    torch.manual_seed(0)
    return RetrieverModule(embedder={"name_or_path": tiny_bert_path, "pooling": "mean", "max_length": 64})


def test_local_beir_task_matches_retrieval_evaluation(tiny_module):
    datamodule = RetrievalDataModule(path="tiny_hotpotqa", eval_split="dev")
    ours = foundation_metrics(tiny_module, datamodule)
    assert 0.0 < ours["ndcg@10"] < 1.0  # a score that can disagree
    task = LocalBEIRRetrieval("tiny_hotpotqa", split="dev")
    theirs = run_mteb(MTEBEncoder(tiny_module, title_separator=": "), [task])["tiny_hotpotqa-dev"]
    assert_same_scores(ours, theirs)
    # mteb's own document text ("title text") is a different input, and the tiny model notices
    mteb_style = run_mteb(MTEBEncoder(tiny_module), [LocalBEIRRetrieval("tiny_hotpotqa", split="dev")])[
        "tiny_hotpotqa-dev"
    ]
    assert mteb_style["ndcg_at_10"] != pytest.approx(ours["ndcg@10"], abs=1e-4)


def write_beir_folder(folder: Path, split_data, split: str) -> None:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for row in split_data["corpus"]:
            f.write(
                json.dumps({"_id": row["id"], "title": row.get("title") or "", "text": row["text"]}) + "\n"
            )
    with (folder / "queries.jsonl").open("w") as f:
        for row in split_data["queries"]:
            f.write(json.dumps({"_id": row["id"], "text": row["text"]}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{qid}\t{did}\t{rel}"
        for qid, docs in split_data["relevant_docs"].items()
        for did, rel in docs.items()
    ]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_wrapper_on_mteb_mock_task_matches_retrieval_evaluation(tmp_path):
    from mteb.mocks import MockRetrievalTask

    module = RetrieverModule(
        embedder={"name_or_path": "all-minilm-l6-v2", "pooling": "mean", "max_length": 64}
    )
    task = MockRetrievalTask()
    task.load_data()
    write_beir_folder(tmp_path / "mock", task.dataset["default"]["test"], "test")
    datamodule = RetrievalDataModule(
        path=str(tmp_path / "mock"), qa_file=None, train_split="test", eval_split="test"
    )
    ours = foundation_metrics(module, datamodule)
    result = summarize(
        __import__("mteb").evaluate(
            MTEBEncoder(module, title_separator=": "),
            MockRetrievalTask(),
            cache=None,
            co2_tracker=False,
            show_progress_bar=False,
        )
    )["MockRetrievalTask"]
    assert_same_scores(ours, result)


def test_encoder_uses_instruction_by_prompt_type_and_rebuilds_documents(tiny_bert_path):
    embedder = Embedder(
        tiny_bert_path, pooling="mean", query_instruction="song : ", document_instruction="city : "
    )
    encoder = MTEBEncoder(embedder, name="tiny", revision="step-7", title_separator=": ")
    assert encoder.mteb_model_meta.name == "llm-supervised-retrievers/tiny"
    assert encoder.mteb_model_meta.revision == "step-7"
    queries = [{"text": ["who wrote the book", "what is the capital"]}]
    documents = [{"text": ["t1 b1", "b2"], "body": ["b1", "b2"], "title": ["t1", ""]}]
    kwargs = {"task_metadata": None, "hf_split": "test", "hf_subset": "default"}
    got_q = encoder.encode(queries, prompt_type=PromptType.query, **kwargs)
    got_d = encoder.encode(documents, prompt_type=PromptType.document, **kwargs)
    torch.testing.assert_close(got_q, embedder.encode(queries[0]["text"], "query"))
    torch.testing.assert_close(got_d, embedder.encode(["t1: b1", "b2"], "document"))
    assert not torch.allclose(got_q, embedder.encode(queries[0]["text"], "document"))
    assert embedder.instructions == {"query": "song : ", "document": "city : "}


def test_encoder_prefix_override_equals_embedder_without_instruction(tiny_bert_path):
    with_instruction = Embedder(tiny_bert_path, pooling="mean", query_instruction="song : ")
    without = Embedder(tiny_bert_path, pooling="mean")
    texts = ["who wrote the book"]
    kwargs = {
        "task_metadata": None,
        "hf_split": "test",
        "hf_subset": "default",
        "prompt_type": PromptType.query,
    }
    overridden = MTEBEncoder(with_instruction, prefixes={"query": ""}).encode([{"text": texts}], **kwargs)
    torch.testing.assert_close(overridden, without.encode(texts, "query"))
    assert with_instruction.instructions["query"] == "song : "


def test_encoder_rejects_models_it_cannot_encode():
    with pytest.raises(TypeError, match="encode_queries"):
        MTEBEncoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="precision"):
        MTEBEncoder(SimpleNamespace(encode_queries=None, encode_documents=None), precision="fp16")


def test_task_specs_resolve_and_fail_clearly(tmp_path):
    (task,) = resolve_tasks(["tiny_hotpotqa@train"], max_queries=3)
    assert isinstance(task, LocalBEIRRetrieval) and task.metadata.name == "tiny_hotpotqa-train"
    preload([task])
    assert len(task.dataset["default"]["train"]["queries"]) == 3
    with pytest.raises(DataFormatError, match="no such split"):
        resolve_tasks(["tiny_hotpotqa@nosuchsplit"])
    with pytest.raises(DataFormatError, match="not found"):
        resolve_tasks([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="unknown MTEB task 'NoSuchTaskAnywhere'"):
        resolve_tasks(["NoSuchTaskAnywhere"])
    with pytest.raises(ValueError, match="repeated"):
        resolve_tasks(["tiny_hotpotqa@dev", "tiny_hotpotqa@dev"])
    assert len(resolve_tasks(["NanoBEIR"])) > 5  # a benchmark name stands for its tasks
    assert split_specs("hotpotqa@dev, RTEB(eng, beta),NanoBEIR") == [
        "hotpotqa@dev",
        "RTEB(eng, beta)",
        "NanoBEIR",
    ]


def test_hub_task_offline_raises_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = resolve_tasks(["NanoSciFactRetrieval"])
    with pytest.raises(MTEBTaskUnavailableError, match="offline mode is set.*BEIR folder"):
        preload(tasks)


class RecordingModule:
    def __init__(self):
        self.logged: dict[str, float] = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def test_under_debug_tiny_hub_task_sets_become_the_fixture():
    callback = MTEBCallback(tasks=["nanobeir", "tiny_hotpotqa@dev"], final_tasks=["beir", "NQ"], tiny=True)
    assert callback.task_specs == ["tiny_hotpotqa@dev"] and callback.final_specs == ["tiny_hotpotqa@dev"]
    assert MTEBCallback(tasks=["nanobeir"], final_tasks=["beir"]).final_specs == ["beir"]


def test_callback_logs_rank_zero_scores_on_every_rank(tmp_path, monkeypatch):
    """Under DDP every rank evaluates (the encoders' collectives need them) and logs rank 0's broadcast scores."""
    rank0 = {"tasks": {"hotpotqa-dev": {"main_score": 0.5, "ndcg_at_10": 0.5}}, "mean": 0.5, "seconds": 1.0}
    callback = MTEBCallback(tasks=["datamodule"])
    evaluated = []
    monkeypatch.setattr(
        callback, "evaluate", lambda trainer, module: evaluated.append(1) or {**rank0, "mean": 0.1}
    )
    strategy = SimpleNamespace(broadcast=lambda obj, src: rank0)
    trainer = SimpleNamespace(
        sanity_checking=False,
        global_step=4,
        world_size=2,
        strategy=strategy,
        is_global_zero=False,
        default_root_dir=str(tmp_path),
    )
    module = RecordingModule()
    callback.on_validation_epoch_end(trainer, module)
    assert evaluated == [1]
    assert module.logged == {
        "mteb/hotpotqa-dev/main_score": 0.5,
        "mteb/hotpotqa-dev/ndcg_at_10": 0.5,
        "mteb/mean": 0.5,
    }
    assert not (tmp_path / "mteb").exists()  # only rank 0 writes files
    with pytest.raises(ValueError, match="at least one task"):
        MTEBCallback(tasks=[])


def test_training_with_mteb_callback_logs_and_monitors(tmp_path):
    """debug=tiny with callbacks=mteb: per-task scores logged, mteb/mean picks the best checkpoint."""
    from tests.helpers import run_experiment

    overrides = ["exp=default", "debug=tiny", "callbacks=mteb", "callbacks.mteb.title_separator=': '"]
    results = run_experiment([*overrides, "callbacks.mteb.final_tasks=[beir]"], tmp_path)
    run_dir = Path(results["run_dir"])
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "mteb").glob("step_*.json"))]
    assert [r["step"] for r in records] == [0, 2]
    # the final set (full BEIR on a cluster) ran once on the trained model; under debug=tiny: the fixture
    final = json.loads((run_dir / "mteb" / "final.json").read_text())
    assert final["step"] == 2 and final["final"] and final["tasks"] == records[-1]["tasks"]
    # with the same document texts, MTEB on the datamodule's split equals the training-time evaluation
    assert records[-1]["tasks"]["tiny_hotpotqa-dev"]["ndcg_at_10"] == pytest.approx(
        results["metrics"]["after"]["ndcg@10"], abs=1e-5
    )
    assert list((run_dir / "checkpoints").glob("best-mteb-step*.ckpt"))
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "mteb/mean" in header and "mteb/tiny_hotpotqa-dev/ndcg_at_10" in header
    card = (run_dir / "export" / "README.md").read_text()
    assert "tiny_hotpotqa-dev" in card and "label use" in card
    # make eval on the best checkpoint rebuilds the module from the run's config and scores the same
    from experiments.evaluate import main as evaluate_main

    best = next((run_dir / "checkpoints").glob("best-mteb-step*.ckpt"))
    evaluate_main(
        [
            "--model",
            str(best),
            "--tasks",
            "tiny_hotpotqa@dev",
            "--title-separator",
            ": ",
            "--output",
            str(tmp_path / "ev"),
        ]
    )
    scores = json.loads((tmp_path / "ev" / "mteb_results.json").read_text())
    assert scores["revision"] == "step-2" and scores["name"] == "default"
    assert scores["tasks"]["tiny_hotpotqa-dev"]["ndcg_at_10"] == pytest.approx(
        results["metrics"]["after"]["ndcg@10"], abs=1e-5
    )
    assert "| tiny_hotpotqa-dev |" in (tmp_path / "ev" / "mteb_results.md").read_text()
