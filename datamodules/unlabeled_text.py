"""Unlabeled text for the LLM2Vec teacher stages (MNTP, then unsupervised SimCSE): docs/llm2vec_gen.md.

Sources (``sources:`` in the stage config, read in order and concatenated):

- ``hotpotqa_corpus``: the vendored HotpotQA paragraphs (``title: text``; no questions, no labels);
- ``nq_open``: the vendored NQ-open question texts (no answers);
- ``tiny_fixture``: the in-repo fixture's paragraphs and questions (``debug=tiny``);
- ``wikitext103``: ``Salesforce/wikitext``, config ``wikitext-103-raw-v1``, split ``train``, column ``text``
  (LLM2Vec's MNTP data), streamed;
- ``wiki1m``: ``wiki1m_for_simcse.txt`` of ``princeton-nlp/datasets-for-simcse`` through the ``text``
  builder (LLM2Vec's SimCSE data, one sentence per line), streamed;
- a local ``.txt`` file (one text per line) or ``.jsonl`` file (``text``, optional ``title``).

Blank lines are dropped; nothing else is filtered (wikitext's ``= Heading =`` lines stay, as in the
reference's concatenated blocks).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from datamodules.beir import load_corpus
from datamodules.errors import DataFormatError
from datamodules.hub import HubTable, iter_rows
from datamodules.jsonl import read_jsonl, require_field
from datamodules.paths import ALIASES
from datamodules.unlabeled_queries import QUERY_SETS, load_unlabeled_queries

MODES = ("mntp", "simcse")


HUB_TEXTS = {  # (table, text column); checked against the stored cards (docs/data.md)
    "wikitext103": (HubTable("Salesforce/wikitext", name="wikitext-103-raw-v1", split="train"), "text"),
    "wiki1m": (
        HubTable(
            "text",
            split="train",
            data_files="hf://datasets/princeton-nlp/datasets-for-simcse/wiki1m_for_simcse.txt",
        ),
        "text",
    ),
}
LOCAL_TEXTS = ("hotpotqa_corpus", "nq_open", "tiny_fixture")


def hub_texts(table: HubTable, column: str) -> Iterator[str]:
    """The text column of a hub table, streamed through :mod:`datamodules.hub` (nothing beyond what is read
    is downloaded)."""
    try:
        for row in iter_rows(table, streaming=True):
            if column not in row:
                raise DataFormatError(table.describe(), f"hub rows have no column '{column}'")
            yield row[column]
    except DataFormatError as err:
        raise DataFormatError(
            table.data_files or table.path,
            f"{err.args[0]}. A stage's text can come from the local sources instead (hotpotqa_corpus, "
            "nq_open) or a local .txt / .jsonl file",
        ) from err


def local_file_texts(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        for line, obj in read_jsonl(path):
            text = require_field(obj, "text", str, path, line)
            title = obj.get("title") or ""
            yield f"{title}: {text}" if title else text
    elif path.suffix == ".txt":
        if not path.is_file():
            raise DataFormatError(path, "file not found")
        yield from path.read_text(encoding="utf-8").splitlines()
    else:
        raise DataFormatError(
            path,
            f"unknown text source (choose from: {', '.join([*LOCAL_TEXTS, *HUB_TEXTS])}, "
            "or a local .txt / .jsonl file)",
        )


def source_texts(source: str) -> Iterator[str]:
    """Every text of one source, in file order (see the module docstring)."""
    if source in HUB_TEXTS:
        yield from hub_texts(*HUB_TEXTS[source])
    elif source == "hotpotqa_corpus":
        yield from (d.as_text() for d in load_corpus(ALIASES["hotpotqa"] / "corpus.jsonl").values())
    elif source == "nq_open":
        yield from (q.text for q in load_unlabeled_queries(QUERY_SETS["nq_open"]))
    elif source == "tiny_fixture":
        folder = ALIASES["tiny_hotpotqa"]
        yield from (d.as_text() for d in load_corpus(folder / "corpus.jsonl").values())
        yield from (obj["text"] for _, obj in read_jsonl(folder / "queries.jsonl"))
    else:
        yield from local_file_texts(Path(source).expanduser())


def load_unlabeled_texts(sources: Iterable[str], max_texts_per_source: int | None = None) -> list[str]:
    """The non-blank texts of ``sources``, at most ``max_texts_per_source`` (the first ones) from each."""
    texts: list[str] = []
    for source in sources:
        non_blank = (t.strip() for t in source_texts(source) if t and t.strip())
        taken = list(islice(non_blank, max_texts_per_source))
        if not taken:
            raise DataFormatError(source, "no non-blank text")
        texts.extend(taken)
    return texts


def token_blocks(texts: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int) -> list[list[int]]:
    """The texts tokenised, joined with the EOS token and cut into ``block_size`` pieces (the remainder
    is dropped), as the reference MNTP script's ``group_texts``."""
    if block_size < 2:
        raise ValueError(f"block size must be >= 2 tokens, got {block_size}")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + separator)
    return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def masking_tokenizer(tokenizer: PreTrainedTokenizerBase, mask_token: str | None) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` whose mask token is ``mask_token`` (None: the tokenizer's own).

    LLM2Vec masks with ``"_"``, an ordinary token of decoder vocabularies (``mask_token_type: blank``).
    """
    masking = copy.deepcopy(tokenizer)
    if mask_token is not None:
        masking.mask_token = mask_token
    if masking.mask_token is None:
        raise ValueError("the tokenizer has no mask token: set the stage's mask_token (LLM2Vec uses '_')")
    if (
        masking.unk_token_id is not None
        and masking.mask_token_id == masking.unk_token_id
        and mask_token != masking.unk_token
    ):
        raise ValueError(f"mask_token '{mask_token}' is not in the tokenizer's vocabulary (it maps to UNK)")
    return masking


class UnlabeledTextDataModule(L.LightningDataModule):
    """Batches of unlabeled text for MNTP (masked token blocks) or SimCSE (padded sentences).

    Args:
        texts: the unlabeled texts (:func:`load_unlabeled_texts`).
        tokenizer: the model's tokenizer.
        mode: ``mntp`` (``input_ids``, ``attention_mask``, ``labels`` from
            ``transformers.DataCollatorForLanguageModeling``) or ``simcse`` (``input_ids``, ``attention_mask``).
        batch_size / max_length: sequences per batch; block length (mntp) or truncation (simcse).
        mlm_probability / mask_token: MNTP masking (80 % mask token, 10 % random, 10 % kept).
        seed: shuffling and masking seed.
    """

    def __init__(
        self,
        texts: list[str],
        tokenizer: PreTrainedTokenizerBase,
        mode: str,
        batch_size: int,
        max_length: int,
        mlm_probability: float = 0.2,
        mask_token: str | None = "_",
        seed: int = 42,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        self.texts, self.tokenizer, self.mode = texts, tokenizer, mode
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.mlm_probability, self.mask_token = mlm_probability, mask_token
        self.items: list[Any] = []

    def setup(self, stage: str | None = None) -> None:
        if self.items:
            return
        if self.mode == "mntp":
            self.items = [{"input_ids": b} for b in token_blocks(self.texts, self.tokenizer, self.max_length)]
            if not self.items:
                raise ValueError(f"the texts hold fewer than {self.max_length} tokens: no MNTP block")
        else:
            self.items = list(self.texts)

    def collate(self) -> Any:
        if self.mode == "mntp":
            return DataCollatorForLanguageModeling(
                masking_tokenizer(self.tokenizer, self.mask_token),
                mlm=True,
                mlm_probability=self.mlm_probability,
                seed=self.seed,
            )
        return lambda texts: self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.items,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=self.collate(),
            drop_last=len(self.items) >= self.batch_size,
        )
