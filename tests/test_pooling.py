import torch

from lightning_modules.models.pooling import last_token_index, pool


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_token_index(right).tolist() == [2, 3]
    assert last_token_index(left).tolist() == [3, 3]


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "mean").item() == 2.0
    assert pool(hidden, torch.tensor([[0, 1, 1]]), "mean").item() == 51.5


def test_embedder_last_pooling_is_padding_invariant(tiny_llama_path):
    """Left padding: a text embeds the same alone as next to a longer text."""
    from lightning_modules.models.embedder import Embedder

    embedder = Embedder(tiny_llama_path, pooling="last", append_eos=True).eval()
    texts = ["the film", "the film was released in the united states by a studio"]
    assert embedder.tokenizer.padding_side == "left"
    with torch.no_grad():
        together = embedder.embed(texts, "query")
        alone = embedder.embed(texts[:1], "query")
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


def test_embedder_mean_pooling_is_padding_invariant(tiny_bert_path):
    from lightning_modules.models.embedder import Embedder

    embedder = Embedder(tiny_bert_path, pooling="mean").eval()
    texts = ["the film", "the film was released in the united states by a studio"]
    with torch.no_grad():
        together = embedder.embed(texts, "document")
        alone = embedder.embed(texts[:1], "document")
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)
