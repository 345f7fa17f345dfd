"""Caches survive a kill mid-write, and a damaged or partial entry is detected and recomputed, never used."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from callbacks.retrieval_eval import RetrievalEvaluation
from callbacks.untrained_cache import read_untrained_score, untrained_score_path, write_untrained_score
from datamodules.retrieval import RetrievalDataModule
from retrieval.cache import (
    CHECKED_MAGIC,
    build_dir_atomically,
    cached_tensors,
    load_checked_tensors,
    read_checked_bytes,
    read_checked_json,
    write_checked_bytes,
    write_checked_json,
)

REPO = Path(__file__).resolve().parents[1]
METRICS = {"ndcg@10": 0.5, "recall@10": 0.6, "recall@100": 0.9, "mrr@10": 0.4}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# ---- build_dir_atomically (converted models, tiny models, any cached folder) ------------------------------
def test_build_killed_mid_build_leaves_no_folder_and_the_next_call_builds_it(tmp_path):
    target = tmp_path / "models" / "converted"
    killed = run_python(f"""
        import os, signal
        from pathlib import Path
        from retrieval.cache import build_dir_atomically
        def build(tmp):
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)  # half of the files are written ...
            os.kill(os.getpid(), signal.SIGKILL)                  # ... when the process is killed
        build_dir_atomically(Path({str(target)!r}), build)
    """)
    assert killed.returncode == -9, killed.stderr
    assert not target.exists(), "a killed build must not leave a folder that looks built"
    leftovers = [p for p in target.parent.iterdir() if p.is_dir()]
    assert leftovers, "the fault injection really interrupted a build"

    build_dir_atomically(target, lambda tmp: (tmp / "model.safetensors").write_bytes(b"w" * 2000))
    assert (target / "model.safetensors").read_bytes() == b"w" * 2000
    assert [p for p in target.parent.iterdir() if p.is_dir()] == [target], (
        "the killed build's temporary is cleaned up"
    )


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_cached_folder_is_detected_and_rebuilt(tmp_path, caplog, damage):
    target = tmp_path / "converted"
    builds = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"w" * 4096)

    build_dir_atomically(target, build)
    build_dir_atomically(target, build)
    assert len(builds) == 1, "an intact folder is reused"
    weights = target / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(b"w" * 100)
    else:
        weights.unlink()
    with caplog.at_level(logging.WARNING):
        build_dir_atomically(target, build)
    assert len(builds) == 2
    assert weights.read_bytes() == b"w" * 4096
    assert "model.safetensors" in caplog.text and "rebuilding" in caplog.text


def test_folder_built_before_manifests_is_still_accepted(tmp_path):
    target = tmp_path / "old"
    target.mkdir()
    (target / ".complete").write_text("ok\n")
    assert build_dir_atomically(target, lambda tmp: pytest.fail("must not rebuild")) == target


# ---- checksummed entries (teacher scores, responses, document states, untrained scores) -------------------
def test_checked_entry_survives_kill_mid_write(tmp_path):
    path = tmp_path / "scores.bin"
    write_checked_bytes(path, b"first version")
    for kill_point in ("write", "replace"):
        killed = run_python(f"""
            import os, signal
            from pathlib import Path
            import retrieval.cache as cache
            real_fsync = os.fsync
            if {kill_point!r} == "write":
                os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # data written, not yet durable/renamed
            else:
                os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)
            cache.write_checked_bytes(Path({str(path)!r}), b"second version, never completed" * 1000)
        """)
        assert killed.returncode == -9, killed.stderr
        assert read_checked_bytes(path) == b"first version", (
            f"killed at {kill_point}: the previous entry stays intact"
        )


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "no_header", "appended"])
def test_damaged_checked_entry_reads_as_missing_and_is_deleted(tmp_path, caplog, damage):
    path = tmp_path / "entry.json"
    write_checked_json(path, {"scores": [0.25, 0.5, 0.75]})
    data = path.read_bytes()
    damaged = {
        "truncated": data[:-4],
        "bit_flip": data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:],
        "no_header": data[len(CHECKED_MAGIC) :],
        "appended": data + b"0",
    }[damage]
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        assert read_checked_json(path) is None
    assert not path.exists(), "a damaged entry is removed so it is recomputed"
    assert "damaged" in caplog.text and str(path) in caplog.text


def test_cached_tensors_recomputes_a_damaged_entry_and_loads_weights_only(tmp_path):
    path = tmp_path / "states.pt"
    calls = []

    def compute():
        calls.append(1)
        return {"states": torch.arange(6.0).reshape(2, 3)}

    assert torch.equal(cached_tensors(path, compute)["states"], torch.arange(6.0).reshape(2, 3))
    cached_tensors(path, compute)
    assert len(calls) == 1
    path.write_bytes(path.read_bytes()[:-10])
    assert torch.equal(cached_tensors(path, compute)["states"], torch.arange(6.0).reshape(2, 3))
    assert len(calls) == 2

    write_checked_bytes(path, _torch_bytes({"object": PickledObject()}))
    assert load_checked_tensors(path) is None, (
        "a pickled object is refused (weights_only=True) and treated as damaged"
    )


class PickledObject:
    """Not a tensor or plain container: ``torch.load(weights_only=True)`` must refuse it."""


def _torch_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ---- the untrained-score cache of the evaluation callback -------------------------------------------------
def test_untrained_score_entry_round_trips_and_partial_or_corrupt_entries_are_recomputed(tmp_path):
    key = "k" * 40
    write_untrained_score(key, METRICS, {"model": "tiny-bert"})
    assert read_untrained_score(key) == METRICS
    write_checked_json(
        untrained_score_path(key), {"metrics": {"ndcg@10": 0.5}}
    )  # intact file, partial record
    assert read_untrained_score(key) is None and not untrained_score_path(key).exists()
    write_checked_json(untrained_score_path(key), {"metrics": {**METRICS, "mrr@10": None}})
    assert read_untrained_score(key) is None
    write_untrained_score(key, METRICS)
    path = untrained_score_path(key)
    path.write_bytes(path.read_bytes()[:-2])  # a partial write by some other tool
    assert read_untrained_score(key) is None


def test_evaluation_callback_uses_intact_cache_and_recomputes_damaged_one():
    datamodule = RetrievalDataModule(tiny=True)
    module = SimpleNamespace(
        untrained_score_key=lambda: {"model": "tiny-bert", "pooling": "mean", "test": "caches"}
    )
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True)
    callback = RetrievalEvaluation(cache_untrained=True)
    assert callback._cached_untrained(trainer, module) is None
    callback._store_untrained(trainer, module, {"metrics": METRICS})
    assert callback._cached_untrained(trainer, module)["metrics"] == METRICS
    key = callback._cache_key(trainer, module)
    path = untrained_score_path(key)
    path.write_bytes(path.read_bytes().replace(b"0.5", b"0.9"))  # silently edited: checksum no longer matches
    assert callback._cached_untrained(trainer, module) is None


def test_a_cold_cache_build_leaves_the_runs_random_numbers_unchanged(tmp_path):
    torch.manual_seed(7)
    warm = torch.rand(4)
    torch.manual_seed(7)
    build_dir_atomically(
        tmp_path / "model", lambda tmp: torch.save(torch.nn.Linear(8, 8).state_dict(), tmp / "w.pt")
    )
    assert torch.equal(torch.rand(4), warm), (
        "building a cache entry (a random init) must not shift the seeded stream"
    )
