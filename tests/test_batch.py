"""The typed batch: collators build it with the groups formed, the module's preparer tokenises it in the
DataLoader workers, and Lightning moves every tensor of it (the method's LM inputs included)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader

from datamodules.batch import Collator, EmbedderInputs, RetrievalBatch, TokenizedTexts, module_preparer
from datamodules.retrieval import GroupDataset, RetrievalDataModule, collate_groups
from lightning_modules.contrastive.module import ContrastiveModule
from lightning_modules.dream.inputs import DreamInputs
from tests.helpers import quiet_trainer


def two_query_batch() -> RetrievalBatch:
    return RetrievalBatch(
        query_ids=["a", "b"],
        queries=["which river", "which city"],
        documents=[["the seine", "a city"], ["paris", "a river"]],
        document_ids=[["d1", "d2"], ["d3", "d4"]],
        document_codes=torch.tensor([[1, 2], [3, 4]]),
        gold=torch.tensor([[True, False], [True, False]]),
        answers=[("seine",), ()],
    )


def test_lightning_moves_every_tensor_of_a_prepared_batch():
    ids = torch.ones(2, 3, dtype=torch.long)
    tokens = TokenizedTexts(ids, ids)
    lm = DreamInputs(ids, ids, ids, ids, ids, context_length=1)
    batch = two_query_batch()
    batch.embedder_inputs = EmbedderInputs(tokens, tokens, torch.arange(4).view(2, 2))
    batch.lm_inputs = lm
    moved = move_data_to_device(batch, torch.device("meta"))  # what transfer_batch_to_device does
    assert isinstance(moved, RetrievalBatch) and moved.documents == batch.documents
    tensors = [moved.document_codes, moved.gold, moved.embedder_inputs.queries.input_ids]
    tensors += [moved.embedder_inputs.candidates, moved.lm_inputs.labels, moved.lm_inputs.document_index]
    assert all(t.device.type == "meta" for t in tensors)
    assert batch.document_codes.device.type == "cpu", "the original batch is left as it was"
    assert moved.lm_inputs.context_length == 1


def test_groups_are_formed_once_and_must_be_equal():
    batch = two_query_batch()
    assert batch.group_size == 2 and batch.flat_documents == ["the seine", "a city", "paris", "a river"]
    assert batch.first_answers == ["seine", ""]
    with pytest.raises(ValueError, match="same number of documents"):
        RetrievalBatch(["a", "b"], ["q", "r"], [["x"], ["y", "z"]], [["1"], ["2", "3"]], torch.zeros(2, 2))


def test_the_dataloader_workers_tokenise_with_the_modules_preparer(tiny_bert_path):
    module = ContrastiveModule(embedder={"name_or_path": tiny_bert_path, "max_length": 32})
    data = RetrievalDataModule(path="tiny_hotpotqa", group_size=3, batch_size=2)
    data.setup("fit")
    assert module_preparer(SimpleNamespace(lightning_module=module)) is None, "only a real Trainer is asked"
    dataset = GroupDataset(data.train_examples, 3, seed=0)
    collate = Collator(lambda items: collate_groups(items, data.doc_index), module.batch_preparer())
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate, num_workers=1)
    batch = next(iter(loader))  # built in a worker process
    assert batch.prepared and batch.embedder_inputs.candidates.tolist() == [[0, 1, 2], [3, 4, 5]]
    expected = module.embedder.text_tokenizer(batch.flat_documents, "document")
    assert torch.equal(batch.embedder_inputs.documents.input_ids, expected.input_ids)
    assert torch.equal(
        batch.embedder_inputs.queries.input_ids, module.embedder.tokenize(batch.queries, "query")["input_ids"]
    )
    raw = collate_groups([dataset[(0, 0)], dataset[(1, 0)]], data.doc_index)
    torch.manual_seed(0)
    from_worker = module.training_step(batch, 0)
    torch.manual_seed(0)
    in_step = module.training_step(raw, 0)  # an unprepared batch is prepared by the module itself
    assert torch.equal(from_worker, in_step)


def test_a_trainer_hands_the_modules_preparer_to_the_collator(tiny_bert_path, tmp_path):
    module = ContrastiveModule(embedder={"name_or_path": tiny_bert_path, "max_length": 32})
    data = RetrievalDataModule(path="tiny_hotpotqa", group_size=2, batch_size=2)
    seen: list[RetrievalBatch] = []
    original = module.training_step
    module.training_step = lambda batch, batch_idx: (seen.append(batch), original(batch, batch_idx))[1]
    quiet_trainer(tmp_path).fit(module, datamodule=data)
    assert seen and seen[0].prepared and seen[0].embedder_inputs is not None
