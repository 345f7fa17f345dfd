"""DREAM's ``attention_backend=flash`` end to end on CPU, through transformers' flash-attention integration.

``tests/standins/flash_attn`` is a pure-torch package with flash-attn 2.7's ``flash_attn_func`` /
``flash_attn_varlen_func`` signatures; the fixture puts it first on ``sys.path``. What runs for real:
model loading with the registered ``dream_fa2`` implementation, its 2D padding mask, transformers'
``flash_attention_forward`` → ``_flash_attention_forward`` (unpadding into packed sequences, ``cu_seqlens``,
the keyword processing built from the kernel's signature, bottom-right causal alignment when the suffix pass
has more keys than queries) and DREAM's split between biased and stock layers.

What does not: the CUDA kernels themselves, and transformers' availability check. In transformers 5,
``is_flash_attn_2_available()`` needs an importable ``flash_attn`` *and* an installed distribution named
``flash-attn`` >= 2.3.3 *and* a CUDA (or MLU/MUSA) device; on a CPU machine it is False whatever is
installed, so the fixture replaces that one function (in ``transformers.modeling_flash_attention_utils``,
where the loader and DREAM's own check read it). A GPU run still has to show kernel speed and numerics.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lightning_modules.dream.attention import DREAM_FLASH, attention_name
from lightning_modules.losses.dream import document_bias, dream_lm_loss, key_position_bias
from tests.dream_fixtures import (  # noqa: F401
    DOCUMENTS,
    TARGETS,
    tokenizer,  # noqa: F401 (pytest fixture)
)
from tests.helpers import compose_config

STANDINS = Path(__file__).resolve().parent / "standins"
CACHED_GLOBALS = (  # transformers caches the imported kernels module-wide: restored after each test
    "_loaded_implementation",
    "_flash_fn",
    "_flash_varlen_fn",
    "_flash_with_kvcache_fn",
    "_pad_fn",
    "_unpad_fn",
    "_process_flash_kwargs_fn",
    "_process_with_kvcache_kwargs_fn",
)


@pytest.fixture
def flash_calls(monkeypatch) -> dict[str, int]:
    """The stand-in on ``sys.path`` and transformers told flash-attn 2 is available; counts kernel calls."""
    from transformers import modeling_flash_attention_utils as flash_utils

    if not torch.cuda.is_available():
        assert not flash_utils.is_flash_attn_2_available(), "transformers found flash-attn 2 without a GPU"
    monkeypatch.syspath_prepend(str(STANDINS))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    for name in CACHED_GLOBALS:
        monkeypatch.setattr(flash_utils, name, getattr(flash_utils, name))
    monkeypatch.setattr(flash_utils, "is_flash_attn_2_available", lambda *args, **kwargs: True)
    import flash_attn

    assert Path(flash_attn.__file__).is_relative_to(STANDINS)
    calls = {"flash_attn_func": 0, "flash_attn_varlen_func": 0}
    for name in calls:
        original = getattr(flash_attn, name)

        @functools.wraps(original)  # transformers reads the kernel's signature to pick its keywords
        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(flash_attn, name, counted)
    yield calls
    sys.modules.pop("flash_attn", None)


def test_the_dream_name_is_no_flash_request_and_flash_needs_the_check():
    from transformers.utils.generic import is_flash_attention_requested

    assert not is_flash_attention_requested(requested_attention_implementation=DREAM_FLASH)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs the flash-attn package and a CUDA GPU"):
            attention_name("flash")


def test_standin_varlen_matches_masked_attention_per_sequence(flash_calls):
    import flash_attn

    torch.manual_seed(0)
    lengths_q, lengths_k = [2, 3], [5, 3]  # more keys than queries: bottom-right causal alignment
    q, k, v = torch.randn(5, 4, 8), torch.randn(8, 2, 8), torch.randn(8, 2, 8)
    out = flash_attn.flash_attn_varlen_func(
        q, k, v, torch.tensor([0, 2, 5]), torch.tensor([0, 5, 8]), 3, 5, causal=True
    )
    start_q = start_k = 0
    for length_q, length_k in zip(lengths_q, lengths_k):
        qs, ks = q[start_q : start_q + length_q], k[start_k : start_k + length_k].repeat_interleave(2, dim=1)
        vs = v[start_k : start_k + length_k].repeat_interleave(2, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / 8**0.5
        allowed = torch.arange(length_q)[:, None] + (length_k - length_q) >= torch.arange(length_k)[None]
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        expected = torch.einsum("hqk,khd->qhd", weights, vs)
        torch.testing.assert_close(out[start_q : start_q + length_q], expected, rtol=1e-5, atol=1e-6)
        start_q, start_k = start_q + length_q, start_k + length_k


def dream_module(backend: str):
    cfg = compose_config(["exp=dream_tiny", "debug=tiny", f"model.attention_backend={backend}"])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all"), cfg


def test_dream_trains_with_the_flash_backend_and_matches_sdpa(flash_calls):
    """The DREAM module built with ``attention_backend=flash`` (it crashed at load before), one training
    batch: the loss and the embedder's gradients equal the SDPA backend's."""
    results = {}
    for backend in ("sdpa", "flash"):
        module, cfg = dream_module(backend)
        assert module.frozen_lm.config._attn_implementation == attention_name(backend)
        data = instantiate(cfg.data, _convert_="all")
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        module.log = lambda *args, **kwargs: None
        loss = module.training_step(batch, 0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results[backend] = (loss.detach(), grads)
    assert flash_calls["flash_attn_varlen_func"] > 0, "transformers' flash path never reached the kernels"
    torch.testing.assert_close(results["flash"][0], results["sdpa"][0], rtol=1e-5, atol=1e-6)
    assert results["flash"][1].keys() == results["sdpa"][1].keys() and results["sdpa"][1]
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["flash"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_suffix_pass_over_the_document_cache_matches_sdpa(flash_calls, tokenizer):  # noqa: F811
    """The cached suffix pass (queries after the documents only) and the full pass, both backends."""
    from lightning_modules.dream.inputs import build_dream_inputs
    from lightning_modules.models.tiny import tiny_model

    inputs = build_dream_inputs(tokenizer, DOCUMENTS, ["which city ? answer", "what ?"], TARGETS, 5)
    cosines = torch.tensor([[0.9, 0.1, -0.5], [0.0, 0.8, 0.2]])
    key_bias = key_position_bias(document_bias(cosines, 0.1), inputs.document_index)
    model = tiny_model("llama", vocab_size=len(tokenizer), tokenizer=tokenizer).eval()
    losses = {}
    for backend in ("sdpa", "flash"):
        model.set_attn_implementation(attention_name(backend))
        for reuse in (False, True):
            losses[backend, reuse] = dream_lm_loss(model, inputs, key_bias, {1: (0, 2)}, reuse).loss
    assert flash_calls["flash_attn_varlen_func"] >= 2  # padded rows go through the packed kernel
    for key, value in losses.items():
        torch.testing.assert_close(value, losses["sdpa", False], rtol=1e-5, atol=1e-6, msg=str(key))
