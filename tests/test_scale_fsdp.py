"""FSDP and DDP on 2 CPU processes over gloo, for every method (docs/scale.md, "What has run where").

``tests/fsdp_cpu_driver.py`` runs under ``torch.distributed.run`` and writes what each rank saw; these tests
read it. One launch trains every method's tiny experiment under ``trainer=fsdp_cpu`` (activation
checkpointing of every layer, gradient clipping, a bf16 frozen LM beside fp32 trainable parameters,
evaluation before and after, export) and under ``trainer=ddp_cpu``; two more launches kill a run while it
writes a sharded checkpoint and resume it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.checkpoint_io import (
    COMPLETE_MARKER,
    IncompleteCheckpointError,
    read_global_step,
    staging_path,
)
from tests.fsdp_cpu_driver import KILL_METHOD, KILLED_EXIT, METHODS, STRATEGY
from tests.helpers import run_experiment

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "fsdp_cpu_driver.py"
LAUNCH_TIMEOUT_S = 900
# relative tolerance of FSDP's logged losses against DDP's (measured: docs/scale.md). fp32 models agree to
# float-summation noise; a bf16 frozen LM runs bf16 matmuls on weights that FSDP holds as views into a
# flat buffer, which CPU kernels may block differently (at step 0, before any update, ~1e-4).
LOSS_RTOL = {
    "contrastive": 1e-5,
    "dream": 1e-5,
    "llm_embedder": 1e-4,
    "llm2vec_gen": 1e-3,
    "rabtriever": 1e-2,
}
EXPERIMENT_DIR = {m: o[0].removeprefix("exp=") for m, o in METHODS.items()}
EXPERIMENT_DIR["contrastive"] = "default"
ROOT_TRAINS = ("contrastive", "llm2vec_gen", "rabtriever")  # embeddings / special tokens, heads / predictor
STRATEGY_CLASS = {"fsdp": "RetrieverFSDPStrategy", "ddp": "DDPStrategy"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, phase: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node 2 tests/fsdp_cpu_driver.py <out> <phase>``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        str(DRIVER),
        str(out),
        phase,
    ]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    (out / f"{phase}.log").write_text(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The ``train`` launch: every method under FSDP and DDP (one pair of processes for all of them)."""
    out = tmp_path_factory.mktemp("fsdp-cpu")
    result = launch(out, "train")
    assert result.returncode == 0, f"driver failed; log tail:\n{(result.stdout + result.stderr)[-4000:]}"
    return out


def run_dir(root: Path, experiment: str) -> Path:
    (found,) = list((root / experiment).glob("*/local"))
    return found


def logged_losses(folder: Path) -> list[float]:
    with open(folder / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def probes(folder: Path) -> list[dict]:
    return [json.loads((folder / f"probe_rank{rank}.json").read_text()) for rank in range(2)]


# ---- every method, FSDP against DDP --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_under_fsdp_with_the_losses_of_ddp(trained, method):
    runs = {s: run_dir(trained / s, EXPERIMENT_DIR[method]) for s in STRATEGY}
    losses = {s: logged_losses(folder) for s, folder in runs.items()}
    assert len(losses["fsdp"]) == len(losses["ddp"]) == 3, losses
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=LOSS_RTOL[method]), losses
    for strategy, folder in runs.items():
        assert json.loads((folder / "results.json").read_text())["budget"]["steps"] == 3
        assert {p["strategy"] for p in probes(folder)} == {STRATEGY_CLASS[strategy]}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_fit_after_validate_has_a_root_unit_whose_parameters_agree_across_ranks(trained, method):
    """``experiments.train`` validates before fit; fit must still wrap a root FSDP unit, so the trainable
    parameters outside the layers (embeddings, special tokens, heads, predictor) are all-reduced."""
    for rank_record in probes(run_dir(trained / "fsdp", EXPERIMENT_DIR[method])):
        root = rank_record["root"]
        assert root["root_is_fsdp"], "fit ran without a root FSDP unit"
        assert root["equal_across_ranks"], f"root parameters diverged across ranks: {root}"
        # LoRA embedders (DREAM, LLM-Embedder) keep every trainable parameter in adapter units
        assert (root["count"] > 0) == (method in ROOT_TRAINS), root
    if method != "contrastive":  # the bf16 frozen LM sits beside fp32 trainable parameters
        dtypes = probes(run_dir(trained / "fsdp", EXPERIMENT_DIR[method]))[0]["parameter_dtypes"]
        expected = ["torch.float32"] if method == "dream" else ["torch.bfloat16", "torch.float32"]
        assert dtypes == expected


@pytest.mark.slow
def test_bf16_mixed_keeps_buffers_in_fp32_and_calibrates_the_same_heads(trained):
    folders = {s: run_dir(trained / f"{s}-bf16", "dream_tiny") for s in STRATEGY}
    losses = {s: logged_losses(folder) for s, folder in folders.items()}
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=2e-4), losses
    records = [r for folder in folders.values() for r in probes(folder)]
    assert all(r["heads"] == records[0]["heads"] for r in records), "ranks or strategies chose other heads"
    for record in probes(folders["fsdp"]):
        assert record["buffers"] and set(record["buffers"].values()) == {"torch.float32"}, record["buffers"]


@pytest.mark.slow
def test_teacher_scores_share_one_cache_namespace_across_ranks(trained):
    records = probes(run_dir(trained / "fsdp", "llm_embedder_tiny"))
    assert records[0]["teacher_cache"] and records[0]["teacher_cache"] == records[1]["teacher_cache"]
    scoring = json.loads(
        (run_dir(trained / "fsdp", "llm_embedder_tiny") / "teacher_scoring.json").read_text()
    )
    assert scoring["qa"]["items"] > 0


@pytest.mark.slow
def test_llm2vec_gen_responses_are_generated_half_per_rank_and_shared(trained):
    records = [json.loads((trained / f"generation_rank{rank}.json").read_text()) for rank in range(2)]
    assert records[0]["responses"] == records[1]["responses"]
    assert any(tokens > 0 for _, tokens, _ in records[0]["responses"])
    assert [r["generated"] for r in records] == [10, 10]  # 20 queries in batches of 2, every other batch
    assert [r["stored_here"] for r in records] == [20, 20], "a rank's own cache folder lacks responses"
    generation_run = probes(run_dir(trained / "fsdp", "llm2vec_gen_tiny"))
    assert generation_run[0]["responses"] == generation_run[1]["responses"]


# ---- export of the full embedder ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("method", "atol"), [("contrastive", 1e-4), ("dream", 3e-2)])
def test_exported_embedder_reproduces_the_final_evaluation(trained, method, atol):
    """The export (LoRA merged for DREAM) encodes the dev split to the scores of the trained FSDP model's last
    evaluation (its TREC run file, 6 decimals; DREAM evaluates in bf16)."""
    from sentence_transformers import SentenceTransformer

    from datamodules.retrieval import RetrievalDataModule

    folder = run_dir(trained / "fsdp", EXPERIMENT_DIR[method])
    model = SentenceTransformer(str(folder / "export"), device="cpu")
    data = RetrievalDataModule(tiny=True)
    corpus = data.load_corpus()
    queries = {q.query_id: q.text for q in data.eval_queries()}
    run = {}
    for line in (folder / "eval" / "run_step_000003.trec").read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    qids = sorted(run)[:4]
    docs = sorted({d for q in qids for d in run[q]})
    q_emb = model.encode([queries[q] for q in qids], convert_to_tensor=True, normalize_embeddings=True)
    d_emb = model.encode(
        [corpus.corpus[d].as_text() for d in docs], convert_to_tensor=True, normalize_embeddings=True
    )
    scores = (q_emb @ d_emb.T).float()
    expected = torch.tensor([[run[q].get(d, float("nan")) for d in docs] for q in qids])
    known = ~expected.isnan()
    torch.testing.assert_close(scores[known], expected[known], atol=atol, rtol=0)


# ---- single process on the same global batch ------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_losses_equal_one_process_on_the_global_batch(trained, tmp_path):
    """Two ranks of 4 queries each (Lightning's distributed sampler deals ranks the even and odd positions of
    the training order) against one process with batches of 8: the same global batches."""
    overrides = [*METHODS["contrastive"], "debug=tiny", "trainer.max_steps=3", "trainer.log_every_n_steps=1"]
    overrides += ["trainer.gradient_clip_val=1.0", "trainer.enable_progress_bar=false", "logger=csv"]
    overrides += ["data.batch_size=8", "eval_before_training=false", "callbacks.export=null"]
    single = run_experiment(overrides, tmp_path)
    losses = logged_losses(Path(single["run_dir"]))
    assert losses == pytest.approx(logged_losses(run_dir(trained / "fsdp", "default")), rel=1e-5)


# ---- a sharded checkpoint killed mid-save, then resumed -------------------------------------------------------
@pytest.mark.slow
def test_a_sharded_checkpoint_killed_mid_save_is_never_resumed_from(trained):
    out = trained / "kill"
    out.mkdir()
    killed = launch(out, "kill")
    assert killed.returncode != 0 and f"exitcode  : {KILLED_EXIT}" in killed.stdout + killed.stderr
    folder = run_dir(out / "killed", EXPERIMENT_DIR[KILL_METHOD])
    last = folder / "checkpoints" / "last.ckpt"
    staging = staging_path(last)
    assert read_global_step(last) == 1 and (last / COMPLETE_MARKER).is_file()
    assert staging.is_dir() and any(staging.glob("*.distcp")), "the second save did not get under way"
    with pytest.raises(IncompleteCheckpointError):
        read_global_step(staging)

    resumed = launch(out, "resume")
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert f"resuming from {last} (step 1)" in log
    assert read_global_step(last) == 3 and not staging.exists()
    # the resumed run continues mid-epoch where it stopped, its frozen LM loaded by name (the checkpoint
    # has none): every step's loss is the uninterrupted run's
    assert logged_losses(folder) == pytest.approx(
        logged_losses(run_dir(trained / "fsdp", EXPERIMENT_DIR[KILL_METHOD])), rel=1e-6
    )


# ---- sharded checkpoints hold the trained tensors only ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m != "contrastive"])
def test_a_sharded_checkpoint_leaves_out_the_frozen_lm(trained, method):
    """Tensors and bytes from the checkpoint's own index (``.metadata``: each tensor's global size and dtype);
    the ``.distcp`` files add a serialisation header per tensor shard, which dominates at this model size."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = run_dir(trained / "fsdp", EXPERIMENT_DIR[method])
    probe = probes(folder)[0]
    trained_keys = set(probe["trained_keys"])
    stored = FileSystemReader(str(folder / "checkpoints" / "last.ckpt")).read_metadata().state_dict_metadata
    tensors = {k: v for k, v in stored.items() if isinstance(v, TensorStorageMetadata)}
    nbytes = {k: math.prod(v.size) * v.properties.dtype.itemsize for k, v in tensors.items()}
    model_keys = {k.removeprefix("model.") for k in tensors if k.startswith("model.")}
    assert model_keys == trained_keys, "the sharded checkpoint's model tensors are the trained ones"
    assert probe["frozen_bytes"] > 0 and not any(k.startswith("frozen_lm.") for k in model_keys)
    assert sum(b for k, b in nbytes.items() if k.startswith("model.")) == probe["trained_bytes"]
    optimizer_params = {k.split(".state.")[1].rsplit(".", 1)[0] for k in tensors if ".state." in k}
    assert optimizer_params and optimizer_params <= trained_keys, "optimizer state of trained parameters only"
    assert sum(nbytes.values()) <= 3 * probe["trained_bytes"] + 8 * len(
        optimizer_params
    )  # params, m, v, step
