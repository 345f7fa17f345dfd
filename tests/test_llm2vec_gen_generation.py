"""Response generation for LLM2Vec-Gen: cache hit/miss, resume after an interruption, EOS from the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules.llm2vec_gen.generation import (
    GenerationSettings,
    ResponseCache,
    end_of_response_ids,
    generate_responses,
    greedy_generate,
    strip_special_strings,
)
from lightning_modules.llm2vec_gen.prompts import PromptBuilder
from lightning_modules.models.frozen_lm import load_frozen_lm

QUERIES = [
    "who wrote the song",
    "what is the capital of the country",
    "when was the film released",
    "where is the river",
    "who played the role",
]


@pytest.fixture(scope="module")
def tiny_lm():
    from lightning_modules.models.registry import resolve_model_path

    return load_frozen_lm(resolve_model_path("tiny-llama"))


def count_generate_calls(model, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return calls


def test_second_run_reads_every_response_from_the_cache(tiny_lm, tmp_path, monkeypatch):
    model, tokenizer = tiny_lm
    settings = GenerationSettings(max_new_tokens=4, batch_size=2)
    calls = count_generate_calls(model, monkeypatch)
    first, report = generate_responses(
        model, tokenizer, QUERIES, settings, "tiny", root=tmp_path, show_progress=False
    )
    assert (report.generated, report.cached, sum(calls)) == (5, 0, 5)
    second, report = generate_responses(
        model, tokenizer, QUERIES, settings, "tiny", root=tmp_path, show_progress=False
    )
    assert (report.generated, report.cached, sum(calls)) == (0, 5, 5)
    assert second == first
    assert all(1 <= r.num_tokens <= 4 for r in first)


def test_interrupted_generation_resumes_with_only_the_missing_queries(tiny_lm, tmp_path, monkeypatch):
    model, tokenizer = tiny_lm
    settings = GenerationSettings(max_new_tokens=3, batch_size=2)

    def stop_after_first_batch(number: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_responses(
            model,
            tokenizer,
            QUERIES,
            settings,
            "tiny",
            root=tmp_path,
            show_progress=False,
            on_batch=stop_after_first_batch,
        )
    calls = count_generate_calls(model, monkeypatch)
    responses, report = generate_responses(
        model, tokenizer, QUERIES, settings, "tiny", root=tmp_path, show_progress=False
    )
    assert (report.cached, report.generated, sum(calls)) == (2, 3, 3)
    uninterrupted, _ = generate_responses(
        model, tokenizer, QUERIES, settings, "tiny", root=tmp_path / "fresh", show_progress=False
    )
    assert responses == uninterrupted


def test_cache_key_covers_lm_prompt_and_settings(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    base = GenerationSettings(max_new_tokens=3, batch_size=2)
    generate_responses(model, tokenizer, QUERIES[:2], base, "tiny", root=tmp_path, show_progress=False)
    for lm_id, settings in [
        ("tiny", GenerationSettings(max_new_tokens=2, batch_size=2)),
        ("tiny", GenerationSettings(instruction="Answer: ", max_new_tokens=3, batch_size=2)),
        ("other-lm", base),
    ]:
        _, report = generate_responses(
            model, tokenizer, QUERIES[:2], settings, lm_id, root=tmp_path, show_progress=False
        )
        assert report.generated == 2, (lm_id, settings)
    _, report = generate_responses(
        model,
        tokenizer,
        QUERIES[:2],
        GenerationSettings(max_new_tokens=3, batch_size=7),
        "tiny",
        root=tmp_path,
        show_progress=False,
    )
    assert report.cached == 2, "batch_size does not change greedy outputs and is not part of the key"


def test_duplicate_queries_are_generated_once_and_foreign_files_are_ignored(tiny_lm, tmp_path, monkeypatch):
    model, tokenizer = tiny_lm
    settings = GenerationSettings(max_new_tokens=2, batch_size=4)
    cache = ResponseCache("tiny", settings, tmp_path)
    cache.folder.mkdir(parents=True)
    (cache.folder / "shard-broken.json").write_text("{not json")
    calls = count_generate_calls(model, monkeypatch)
    responses, report = generate_responses(
        model, tokenizer, [QUERIES[0]] * 3, settings, "tiny", root=tmp_path, show_progress=False
    )
    assert sum(calls) == 1 and report.generated == 1 and len(responses) == 3
    shards = [p for p in cache.folder.glob("shard-*.json") if p.name != "shard-broken.json"]
    assert len(shards) == 1 and json.loads(shards[0].read_text())


def test_responses_stop_at_the_tokenizers_eos_and_carry_no_special_strings(tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    eos = tokenizer.eos_token_id
    assert end_of_response_ids(tokenizer, model)[0] == eos
    word = tokenizer.convert_tokens_to_ids("the")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    prompt = PromptBuilder(tokenizer).ids("who wrote the song")

    def fake_generate(input_ids, attention_mask, generation_config):
        assert generation_config.do_sample is False and eos in list(generation_config.eos_token_id)
        new = torch.tensor([[word, im_start, word, eos, word], [word, word, word, word, word]])
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    finished, unfinished = greedy_generate(model, tokenizer, [prompt, prompt], max_new_tokens=5)
    assert (finished.text, finished.num_tokens, finished.finished) == ("the the", 3, True)
    assert (unfinished.num_tokens, unfinished.finished) == (5, False)
    assert strip_special_strings("a <|im_end|> b<|im_start|>", tokenizer) == "a  b"


def test_prompt_truncates_the_text_but_keeps_the_chat_template(tiny_lm):
    _, tokenizer = tiny_lm
    builder = PromptBuilder(tokenizer, use_chat_template=True, max_text_tokens=3)
    ids = builder.ids("who wrote the song about the river")
    assert ids[: len(builder.prefix_ids)] == builder.prefix_ids
    assert ids[-len(builder.suffix_ids) :] == builder.suffix_ids
    assert len(ids) == len(builder.prefix_ids) + 3 + len(builder.suffix_ids)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in builder.suffix_ids  # the assistant turn opens
    batch = builder.batch(["who", "who wrote the song"])
    assert batch["attention_mask"][0].tolist()[0] == 0 and batch["attention_mask"][:, -1].tolist() == [1, 1]
