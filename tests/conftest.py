"""Test session setup: offline, a private cache, small thread count; shared tiny-model fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    # one cache per test session unless the caller pins one (tiny models are rebuilt in ~1 s)
    if "LSR_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["LSR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lsr-test-cache-")
    # tiny models: thread start-up costs more than it saves, and DDP tests run 2 processes on 2 cores
    torch.set_num_threads(1)


@pytest.fixture
def tiny_llama_path() -> str:
    from lightning_modules.models.registry import resolve_model_path

    return resolve_model_path("tiny-llama")


@pytest.fixture
def tiny_bert_path() -> str:
    from lightning_modules.models.registry import resolve_model_path

    return resolve_model_path("tiny-bert")
