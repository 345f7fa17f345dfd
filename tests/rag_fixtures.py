"""A hand-built example where the retrieved documents determine the answer, for the downstream evaluation.

- ``write_qa_folder``: a BEIR folder of 4 questions; each has one gold paragraph that contains its
  (made-up) answer and repeats the answer's last word, and one junk paragraph that does not.
- ``build_copy_lm``: a one-layer Llama whose next-token distribution favours the tokens of its context
  (queries and keys are zero, so attention averages the one-hot token embeddings it attends to, and the
  head reads that average back): an answer that appears in the prompt gets a lower NLL, and its first
  greedy token is the context's most frequent one.
- ``LookupRetriever``: embeds each question and the document assigned to it as the same one-hot vector,
  so we know exactly what it retrieves (the gold paragraph, or the junk one).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from callbacks.rag_reader import DEFAULT_DOCUMENT_TEMPLATE, DEFAULT_TEMPLATE
from lightning_modules.models.tiny import vocabulary_from_texts, word_level_tokenizer

QUESTIONS = [
    ("q0", "which city is the capital of zorland ?", "vexa", "zorland"),
    ("q1", "who painted the blue orchard mural ?", "talsen", "orchard"),
    ("q2", "what river flows through old drummet ?", "the kello", "drummet"),
    ("q3", "which metal is mined at the quarn hills ?", "pale cobalt", "quarn"),
]
JUNK = "the weather report said rain would come on tuesday and the market stayed quiet all week"


def gold_id(qid: str) -> str:
    return f"gold-{qid}"


def junk_id(qid: str) -> str:
    return f"junk-{qid}"


def gold_text(topic: str, answer: str) -> str:
    """The gold paragraph: the answer once, then its last word four more times (the copy LM's greedy pick)."""
    key = answer.split()[-1] if answer else ""
    return f"{topic} : the answer is {answer} . {key} , {key} , {key} , {key} ."


def write_qa_folder(folder: Path) -> Path:
    """corpus.jsonl, queries.jsonl (with answers) and qrels/dev.tsv of the hand-built example."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for qid, question, answer, topic in QUESTIONS:
        gold = gold_text(topic, answer)
        corpus.append({"_id": gold_id(qid), "title": topic, "text": gold})
        corpus.append({"_id": junk_id(qid), "title": f"news {qid[1]}", "text": JUNK})
        queries.append({"_id": qid, "text": question, "metadata": {"answers": [answer]}})
        qrels.append(f"{qid}\t{gold_id(qid)}\t1")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "dev.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def small_llama(
    tokenizer, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, init: float = 0.02
) -> LlamaForCausalLM:
    """An untied Llama for ``tokenizer``'s vocabulary, in eval mode (random weights drawn with std ``init``)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        initializer_range=init,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def build_copy_lm(folder: Path, scale: float = 3.0, residual: float = 0.01) -> Path:
    """Save the context-copying LM and its word-level tokenizer as ``<folder>/tiny-copy-lm``.

    ``h_t = r · e(x_t) + sqrt(H) · mean_{s ≤ t} e(x_s)`` (one-hot embeddings scaled by ``r = residual``,
    which the layer's RMSNorm undoes for the attention values; uniform causal attention; a zero MLP),
    ``logits_t = scale · RMSNorm(h_t)``: the more often a token occurs in the context, the likelier it is
    next. The folder name and ``.complete`` marker make ``load_tokenizer`` keep the word-level
    tokenizer (as for the project's tiny models).
    """
    texts = [json.dumps(QUESTIONS), JUNK, gold_text("", ""), DEFAULT_TEMPLATE, DEFAULT_DOCUMENT_TEMPLATE]
    texts.append("news 0 1 2 3 : [ ] user assistant")
    tokenizer = word_level_tokenizer(vocabulary_from_texts(texts), "decoder")
    vocab = len(tokenizer)
    hidden = -(-vocab // 4) * 4
    model = small_llama(tokenizer, hidden=hidden, layers=1, heads=1, kv_heads=1, intermediate=4)
    identity = torch.eye(vocab, hidden)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.embed_tokens.weight.copy_(residual * identity)
        layer = model.model.layers[0]
        layer.self_attn.v_proj.weight.copy_(torch.eye(hidden))
        layer.self_attn.o_proj.weight.copy_(torch.eye(hidden))
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm):
            norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(scale * identity)
    target = folder / "tiny-copy-lm"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / ".complete").write_text("ok")
    return target


class LookupRetriever(L.LightningModule):
    """Query ``i`` and the document assigned to it share the one-hot embedding ``i``; every other text is 0.

    Args:
        assigned: ``{query text: document text}`` (document texts as ``Document.as_text()`` gives them).
    """

    def __init__(self, assigned: dict[str, str], name: str = "lookup"):
        super().__init__()
        self.name = name
        self.slots = {text: i for i, text in enumerate(assigned)}
        self.slots.update({doc: i for i, doc in enumerate(assigned.values())})
        self.width = len(assigned)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def _embed(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.width)
        for row, text in enumerate(texts):
            if text in self.slots:
                out[row, self.slots[text]] = 1.0
        return out

    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self._embed(texts)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self._embed(texts)

    def untrained_score_key(self) -> dict[str, str]:
        """What the start's scores depend on (the start-row cache is keyed by it)."""
        return {"lookup": self.name}

    def validation_step(self, batch, batch_idx) -> None:
        return None


def retriever_for(kind: str) -> LookupRetriever:
    """``gold``: each question retrieves its gold paragraph first; ``junk``: its junk paragraph."""
    assigned = {}
    for qid, question, _, topic in QUESTIONS:
        if kind == "gold":
            answer = next(a for q, _, a, _ in QUESTIONS if q == qid)
            assigned[question] = f"{topic}: {gold_text(topic, answer)}"
        else:
            assigned[question] = f"news {qid[1]}: {JUNK}"
    return LookupRetriever(assigned, name=kind)


class DumpRagState(L.Callback):
    """Writes each rank's ``rag/*`` metrics, LM reads and whether its references came from the cache
    (spawned DDP workers hand nothing back to the test process)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from callbacks.rag_eval import RagEvaluation

        rag = next(c for c in trainer.callbacks if isinstance(c, RagEvaluation))
        record = {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("rag/")},
            "lm_items": rag.reader.lm_items,
            "references_cached": all(row.get("cached", False) for row in rag.references.values()),
        }
        path = Path(self.folder) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))
