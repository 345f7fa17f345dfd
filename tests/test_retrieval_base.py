"""The base layer's shared algorithms: length-ordered batching, block-wise top-k, the one cache key."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from retrieval.batching import map_in_length_order
from retrieval.cache import cache_key
from retrieval.search import exact_top_k, top_k_in_blocks


def test_batches_go_longest_first_and_results_come_back_in_input_order():
    lengths = [1, 5, 3, 5, 2]
    calls: list[list[int]] = []

    def compute(index: list[int]) -> torch.Tensor:
        calls.append(index)
        return torch.tensor([[10.0 * i, lengths[i]] for i in index])

    out = map_in_length_order(lengths, 2, compute)
    assert calls == [[1, 3], [2, 4], [0]], "longest first; equal lengths keep their order"
    assert out.tolist() == [[10.0 * i, lengths[i]] for i in range(5)]
    with pytest.raises(ValueError, match="at least one item"):
        map_in_length_order([], 2, compute)


@pytest.mark.parametrize("block_size", [1, 3, 7, 100])
def test_block_wise_top_k_equals_one_full_top_k(block_size):
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(4, 8, generator=generator), torch.randn(23, 8, generator=generator)
    full = (queries @ documents.T).topk(5, dim=1)
    scores, indices = top_k_in_blocks(lambda s, e: queries @ documents[s:e].T, 4, 23, 5, block_size)
    assert torch.equal(indices, full.indices) and torch.allclose(scores, full.values)
    assert torch.equal(exact_top_k(queries, documents, 5, chunk=3)[1], full.indices)
    assert top_k_in_blocks(lambda s, e: queries @ documents[s:e].T, 4, 23, 50, 10)[1].shape == (4, 23)


def test_one_cache_key_for_objects_and_streamed_texts():
    obj = {"model": "smollm2", "template": "Frage: {query} — Antwort:", "k": 3}
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    assert cache_key(obj) == hashlib.sha1(canonical).hexdigest(), "existing teacher-score caches stay valid"
    assert cache_key({"k": 3, "template": obj["template"], "model": "smollm2"}) == cache_key(obj)
    streamed = hashlib.sha1(canonical + b"doc one\x00doc two\x00").hexdigest()
    assert cache_key(obj, ["doc one", "doc two"]) == streamed
    assert cache_key(obj, ["doc one", "doc two"]) != cache_key(obj, ["doc one doc two"])
