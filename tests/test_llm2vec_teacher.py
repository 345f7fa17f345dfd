"""The LLM2Vec teacher's training steps on tiny models: MNTP and SimCSE train LoRA only, learn, and save a
merged bidirectional model that the teacher Embedder reproduces; a released teacher's adapters merge as
PEFT composes them, and an adapter that does not fit is named."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.unlabeled_text import UnlabeledTextDataModule, load_unlabeled_texts
from lightning_modules.llm2vec.mntp import MNTPModule
from lightning_modules.llm2vec.released import AdapterMismatchError, save_released_teacher
from lightning_modules.llm2vec.simcse import SimCSEModule
from lightning_modules.models.embedder import Embedder


def batch_of(module, mode: str, **kwargs):
    texts = load_unlabeled_texts(["tiny_fixture"], max_texts_per_source=32)
    data = UnlabeledTextDataModule(texts, module.tokenizer, mode, batch_size=4, max_length=12, **kwargs)
    data.setup("fit")
    return data.collate()(data.items[:4])


def train(module, batch, steps: int = 6, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same masks / dropout every step: the loss can only move by learning
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_mntp_trains_lora_only_learns_and_saves_a_merged_lm(tiny_llama_path, tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    module = MNTPModule(tiny_llama_path, lora={"r": 4})
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    losses = train(module, batch_of(module, "mntp", mask_token="<unk>"))
    assert losses[-1] < losses[0]
    module.save_merged(tmp_path / "mntp")
    merged = Embedder(
        str(tmp_path / "mntp"), pooling="mean", normalize=False, attention="bidirectional"
    ).eval()
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        expected = module.backbone.eval().base_model(input_ids=ids).last_hidden_state
        assert torch.allclose(merged.backbone(input_ids=ids).last_hidden_state, expected, atol=1e-5)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "mntp"), torch.nn.Module)


def test_simcse_views_differ_by_dropout_and_the_loss_falls(tiny_llama_path, tmp_path):
    torch.manual_seed(0)
    module = SimCSEModule(tiny_llama_path, dropout=0.3, lora={"r": 4})
    batch = batch_of(module, "simcse")
    module.train()
    first = module.embed(batch["input_ids"], batch["attention_mask"])
    second = module.embed(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(first, second)  # two dropout masks: two views
    module.eval()
    with torch.no_grad():
        assert torch.allclose(
            module.embed(batch["input_ids"], batch["attention_mask"]),
            module.embed(batch["input_ids"], batch["attention_mask"]),
        )
    module.train()
    similar = module.tokenizer(
        ["the film was", "the film is", "a film was", "the films were"], padding=True, return_tensors="pt"
    )  # near-duplicates at τ = 1: telling them apart has to be learnt
    module.temperature = 1.0
    losses = train(module, dict(similar), steps=6, lr=5e-3)
    assert losses[0] > 0.5 and losses[-1] < losses[0]
    module.save_merged(tmp_path / "teacher")
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert config["attention_dropout"] == 0.0  # the training dropout is not shipped with the teacher


def tiny_adapter(base_path: str, folder, seed: int, targets: list[str]) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = get_peft_model(AutoModel.from_pretrained(base_path), LoraConfig(r=2, target_modules=targets))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # non-zero, so merging changes the model
    model.save_pretrained(folder)
    return str(folder)


def test_released_teacher_merges_base_mntp_and_simcse_adapters(tiny_llama_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    mntp = tiny_adapter(tiny_llama_path, tmp_path / "mntp", 1, ["q_proj", "v_proj"])
    simcse = tiny_adapter(tiny_llama_path, tmp_path / "simcse", 2, ["k_proj", "o_proj"])
    merged = save_released_teacher(tmp_path / "teacher", mntp, simcse)
    assert merged["base"] == tiny_llama_path  # the MNTP adapter names its base
    reference = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_llama_path), mntp).merge_and_unload()
    reference = PeftModel.from_pretrained(reference, simcse).eval()
    teacher = Embedder(str(tmp_path / "teacher"), pooling="mean", normalize=False).eval()
    base = AutoModel.from_pretrained(tiny_llama_path).eval()
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        ours = teacher.backbone(input_ids=ids).last_hidden_state
        assert torch.allclose(ours, reference(input_ids=ids).last_hidden_state, atol=1e-5)
        assert not torch.allclose(ours, base(input_ids=ids).last_hidden_state, atol=1e-3)


def test_an_adapter_whose_tensors_find_no_place_is_named(tiny_llama_path, tmp_path):
    good = tiny_adapter(tiny_llama_path, tmp_path / "ok", 1, ["q_proj"])
    tiny_adapter(tiny_llama_path, tmp_path / "bad", 2, ["q_proj"])
    config = tmp_path / "bad" / "adapter_config.json"
    config.write_text(config.read_text().replace('"q_proj"', '"up_proj"'))  # its tensors still name q_proj
    with pytest.raises(AdapterMismatchError, match=r"does not fit LlamaModel: \d+ of \d+ saved tensors"):
        save_released_teacher(tmp_path / "teacher", good, str(tmp_path / "bad"))


def test_an_adapter_that_cannot_be_read_is_named(tmp_path):
    from lightning_modules.models.registry import ModelNotFoundError

    missing = str(tmp_path / "no-such-adapter")
    with pytest.raises(ModelNotFoundError, match=r"adapter '.*no-such-adapter' cannot be loaded"):
        save_released_teacher(tmp_path / "teacher", missing, missing)
