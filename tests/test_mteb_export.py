"""The exported folder loads with sentence-transformers (and ``make eval``) and gives the Embedder's embeddings."""

from __future__ import annotations

import pytest
import torch

from callbacks.export import model_card
from experiments.eval_models import load_export
from lightning_modules.models.embedder import Embedder

QUERIES = ["what is the name of the fight song", "who was the writer of these boots"]
DOCUMENTS = [
    "kansas song is the fight song of the university of kansas",
    "the company is headquartered in mumbai",
]


# left padding + last-token pooling: the case most likely to drift between the Embedder and sentence-transformers
@pytest.mark.parametrize("pooling", ["last"])
def test_export_loads_with_sentence_transformers_and_matches(tmp_path, tiny_llama_path, pooling):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    embedder = Embedder(
        tiny_llama_path,
        pooling=pooling,
        query_instruction="song : ",
        document_instruction="city : ",
        max_length=32,
        lora={"r": 4, "lora_alpha": 8},
    )
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter change the output so merging is tested
        for name, param in embedder.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    hparams = {
        "embedder": {
            "name_or_path": "tiny-llama",
            "pooling": pooling,
            "lora": {"r": 4},
            "max_length": 32,
            "query_instruction": "song : ",
            "document_instruction": "city : ",
        }
    }
    results = {
        "experiment": "dream_tiny",
        "method": "dream",
        "start": "tiny-llama",
        "label_use": "none",
        "candidates": "HotpotQA candidates",
        "budget": {"steps": 2, "seconds_per_step": 1.0},
        "metrics": {"before": {"ndcg@10": 0.1}, "after": {"ndcg@10": 0.25}},
    }
    card = model_card(
        "DreamModule",
        hparams,
        results=results,
        config={"data": {"path": "hotpotqa", "train_split": "train", "eval_split": "dev"}},
        mteb={"step": 2, "tasks": {"hotpotqa-dev": {"main_score": 0.3, "ndcg_at_10": 0.3}}},
    )
    folder = embedder.save_pretrained(tmp_path / "export", model_card=card)

    model = SentenceTransformer(str(folder), device="cpu")
    st_queries = model.encode(QUERIES, prompt_name="query", convert_to_tensor=True)
    st_documents = model.encode(DOCUMENTS, prompt_name="document", convert_to_tensor=True)
    torch.testing.assert_close(st_queries.cpu(), embedder.encode(QUERIES, "query"), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        st_documents.cpu(), embedder.encode(DOCUMENTS, "document"), atol=1e-5, rtol=1e-4
    )
    # make eval's loader rebuilds the same embedder from the folder
    reloaded = load_export(folder)
    torch.testing.assert_close(
        reloaded.encode(QUERIES, "query"), embedder.encode(QUERIES, "query"), atol=1e-5, rtol=1e-4
    )

    readme = (folder / "README.md").read_text()
    for expected in (
        "# dream_tiny: dream retriever",
        "label use: none",
        "`hotpotqa`, trained on split `train`",
        "| ndcg@10 | 0.1000 | 0.2500 | +0.1500 |",
        "| hotpotqa-dev | 0.3000 |",
        "LoRA merged",
        'prompt_name="query"',
        '"pooling": "' + pooling + '"',
    ):
        assert expected in readme, expected
