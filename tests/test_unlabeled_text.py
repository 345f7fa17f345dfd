"""Unlabeled text for the LLM2Vec teacher: the lab's local sources, the hub sources (wikitext-103, Wiki1M)
through the real loader code path with ``datasets.load_dataset`` faked offline on rows of the real schema,
and the MNTP / SimCSE batches."""

from __future__ import annotations

import datasets
import pytest
import torch

from datamodules.errors import DataFormatError
from datamodules.unlabeled_text import (
    UnlabeledTextDataModule,
    load_unlabeled_texts,
    masking_tokenizer,
    token_blocks,
)

# Salesforce/wikitext wikitext-103-raw-v1 train: one line per row, column "text" (card, "Data Fields");
# blank rows and " = Heading = " rows as in the file; the paragraph is the card's cropped example
WIKITEXT_ROWS = [
    {"text": ""},
    {"text": " = Valkyria Chronicles III = \n"},
    {"text": ""},
    {
        "text": " Senjō no Valkyria 3 : Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the Battlefield 3 ) , commonly referred to as Valkyria Chronicles 3 \n"
    },
]
# wiki1m_for_simcse.txt through the "text" builder: one sentence per line -> {"text": line}
WIKI1M_ROWS = [{"text": "YMCA in South Australia"}, {"text": "South Australia is a state of Australia."}]


@pytest.fixture
def hub(monkeypatch):
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append({"path": path, "name": name, **kwargs})
        rows = {"Salesforce/wikitext": WIKITEXT_ROWS, "text": WIKI1M_ROWS}.get(path)
        if rows is None:
            raise ConnectionError("offline")
        dataset = datasets.Dataset.from_list(rows)
        return dataset.to_iterable_dataset() if kwargs.get("streaming") else dataset

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_wikitext_is_streamed_from_its_parquet_config_and_blank_lines_are_dropped(hub):
    texts = load_unlabeled_texts(["wikitext103"], max_texts_per_source=5)
    assert hub == [
        {"path": "Salesforce/wikitext", "name": "wikitext-103-raw-v1", "split": "train", "streaming": True}
    ]
    assert texts[0] == "= Valkyria Chronicles III =" and texts[1].startswith("Senjō no Valkyria 3")
    assert len(texts) == 2


def test_wiki1m_is_the_text_file_of_the_simcse_repository(hub):
    texts = load_unlabeled_texts(["wiki1m"], max_texts_per_source=1)
    assert hub[0]["path"] == "text" and hub[0]["streaming"] is True
    assert hub[0]["data_files"] == "hf://datasets/princeton-nlp/datasets-for-simcse/wiki1m_for_simcse.txt"
    assert texts == ["YMCA in South Australia"]


def test_unreachable_hub_says_what_to_use_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataFormatError,
        match=r"could not load Salesforce/wikitext \(wikitext-103-raw-v1\) split train from the hub.*hotpotqa_corpus, nq_open",
    ):
        load_unlabeled_texts(["wikitext103"])


def test_local_sources_hold_paragraphs_and_questions_without_labels(tmp_path):
    texts = load_unlabeled_texts(["hotpotqa_corpus", "nq_open"])
    assert len(texts) == 4858 + 1000
    assert texts[0].startswith("Meet Corliss Archer: ")  # title: text
    (tmp_path / "mine.txt").write_text("one line\n\nanother\n")
    assert load_unlabeled_texts([str(tmp_path / "mine.txt")]) == ["one line", "another"]
    with pytest.raises(DataFormatError, match="unknown text source"):
        load_unlabeled_texts([str(tmp_path / "mine.csv")])


def test_token_blocks_join_texts_with_eos_and_drop_the_remainder(tiny_llama_path):
    from lightning_modules.models.frozen_lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_path)
    blocks = token_blocks(["the film", "the river was long"], tokenizer, block_size=3)
    eos = tokenizer.eos_token_id
    the, film = tokenizer("the film", add_special_tokens=False)["input_ids"]
    assert blocks[0] == [the, film, eos] and len(blocks) == 2 and all(len(b) == 3 for b in blocks)


def test_mntp_batches_mask_about_a_fifth_with_the_chosen_token(tiny_llama_path):
    from lightning_modules.models.frozen_lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_path)
    data = UnlabeledTextDataModule(
        load_unlabeled_texts(["tiny_fixture"]),
        tokenizer,
        "mntp",
        batch_size=64,
        max_length=32,
        mask_token="<unk>",
    )
    data.setup("fit")
    originals = torch.tensor([item["input_ids"] for item in data.items[:64]])
    batch = data.collate()(data.items[:64])
    masked = batch["labels"] != -100
    assert batch["input_ids"].shape == (64, 32) and 0.15 < masked.float().mean().item() < 0.25
    assert torch.equal(batch["labels"][masked], originals[masked])  # labels hold the original tokens
    assert torch.equal(batch["input_ids"][~masked], originals[~masked])  # the rest is untouched
    replaced = batch["input_ids"][masked] == tokenizer.unk_token_id
    assert 0.7 < replaced.float().mean().item() < 0.9  # 80 % mask token, 10 % random, 10 % kept
    assert tokenizer.mask_token is None  # the model's tokenizer is left as it was


def test_mask_token_outside_the_vocabulary_is_refused(tiny_llama_path):
    from lightning_modules.models.frozen_lm import load_tokenizer

    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        masking_tokenizer(load_tokenizer(tiny_llama_path), "qqqzzz")


def test_simcse_batches_are_padded_sentences(tiny_llama_path):
    from lightning_modules.models.frozen_lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_path)
    data = UnlabeledTextDataModule(["the film", "the river was long and wide"], tokenizer, "simcse", 2, 4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 4 and set(batch) >= {"input_ids", "attention_mask"}
    assert torch.equal(batch["attention_mask"].sum(1).sort().values, torch.tensor([2, 4]))
