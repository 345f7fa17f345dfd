"""The Embedder: gradients, LoRA, instructions, and a sentence-transformers export with equal embeddings."""

from __future__ import annotations

import torch

from lightning_modules.models.embedder import Embedder


def test_gradient_reaches_every_trainable_weight(tiny_bert_path):
    embedder = Embedder(tiny_bert_path, pooling="mean")
    q = embedder.embed(["who directed the film"], "query")
    d = embedder.embed(["the film was directed by a man"], "document")
    (q * d).sum().backward()
    grads = [p.grad for p in embedder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5])
    assert (
        torch.linalg.vector_norm(q, dim=-1).item() == torch.tensor(1.0).item()
        or abs(torch.linalg.vector_norm(q, dim=-1).item() - 1) < 1e-5
    )


def test_lora_trains_only_adapters(tiny_llama_path):
    embedder = Embedder(tiny_llama_path, pooling="last", lora={"r": 4})
    trainable = [n for n, p in embedder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_instruction_prefix_changes_the_input(tiny_bert_path):
    embedder = Embedder(tiny_bert_path, query_instruction="question :", document_instruction="")
    q = embedder.tokenize(["film"], "query")["input_ids"]
    d = embedder.tokenize(["film"], "document")["input_ids"]
    assert q.shape[1] == d.shape[1] + 2


def test_encode_keeps_input_order_and_matches_embed(tiny_bert_path):
    embedder = Embedder(tiny_bert_path).eval()
    texts = ["a", "a much longer text about the film and its director", "the film"]
    encoded = embedder.encode(texts, "document", batch_size=2)
    with torch.no_grad():
        direct = embedder.embed(texts, "document")
    torch.testing.assert_close(encoded, direct, atol=1e-5, rtol=1e-5)


def test_export_loads_in_sentence_transformers_with_equal_embeddings(tiny_llama_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    embedder = Embedder(tiny_llama_path, pooling="mean", lora={"r": 4}, query_instruction="query : ")
    with torch.no_grad():  # move the adapters away from their zero init so the merge matters
        for name, p in embedder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    embedder.eval()
    texts = ["the film was released", "who directed it"]
    ours = embedder.encode(texts, "query")
    embedder.save_pretrained(tmp_path / "export")
    st = SentenceTransformer(str(tmp_path / "export"), device="cpu")
    theirs = torch.from_numpy(st.encode(texts, prompt_name="query"))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_export_with_last_token_pooling_and_eos_matches(tiny_llama_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    embedder = Embedder(tiny_llama_path, pooling="last", append_eos=True, max_length=16).eval()
    texts = ["the film was released in the united states", "who"]
    ours = embedder.encode(texts, "document")
    embedder.save_pretrained(tmp_path / "export")
    st = SentenceTransformer(str(tmp_path / "export"), device="cpu")
    theirs = torch.from_numpy(st.encode(texts))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
