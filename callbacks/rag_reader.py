"""The frozen LM as a reader: ``[documents; question]`` prompts, the gold answer's NLL and a greedy answer.

One forward pass per batch serves both measurements (docs/evaluation.md, "Downstream"): prompts are
left-padded so they all end at the same column ``P`` and the gold answers follow, right-padded. That pass
teacher-forces the answer (its mean token NLL) and fills the key/value cache; the cache is cut back to
the prompt and greedy decoding continues from it, so the prompt is encoded once. Batches are sorted by
length (little padding), run without gradient and optionally under bf16 autocast.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from datamodules.records import Document
from lightning_modules.losses.dream import per_example_nll
from lightning_modules.rabtriever.passes import autocast_for

DEFAULT_TEMPLATE = "{documents}Answer the question in a few words.\nQuestion: {question}"
DEFAULT_DOCUMENT_TEMPLATE = "Document [{rank}]: {text}\n"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ReaderPrompt:
    """How a question and its documents become the LM's prompt.

    Args:
        template: the user message; ``{documents}`` (the formatted documents, empty without retrieval) and
            ``{question}``.
        document_template: one document; ``{rank}`` (1-based) and ``{text}`` (``title: text``, truncated).
        chat_template: wrap the message in the tokenizer's chat template with the assistant turn opened
            (instruct LMs); a tokenizer without a chat template gets the plain message.
        document_max_tokens: each document is cut to this many LM tokens.
    """

    template: str = DEFAULT_TEMPLATE
    document_template: str = DEFAULT_DOCUMENT_TEMPLATE
    chat_template: bool = True
    document_max_tokens: int = 128

    def __post_init__(self) -> None:
        for field, text, needed in (
            ("template", self.template, ("{documents}", "{question}")),
            ("document_template", self.document_template, ("{text}",)),
        ):
            missing = [n for n in needed if n not in text]
            if missing:
                raise ValueError(f"{field} must contain {' and '.join(missing)}; got {text!r}")
        if self.document_max_tokens < 1:
            raise ValueError(f"document_max_tokens must be >= 1, got {self.document_max_tokens}")


class PromptBuilder:
    """Token ids of reader prompts and gold answers for one tokenizer (truncated documents are memoised)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt: ReaderPrompt):
        self.tokenizer, self.prompt = tokenizer, prompt
        self.uses_chat = prompt.chat_template and bool(getattr(tokenizer, "chat_template", None))
        self._documents: dict[str, str] = {}

    def document_text(self, document: Document) -> str:
        if document.doc_id not in self._documents:
            text = document.as_text()
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            limit = self.prompt.document_max_tokens
            self._documents[document.doc_id] = (
                text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])
            )
        return self._documents[document.doc_id]

    def message(self, question: str, documents: Sequence[Document]) -> str:
        """The user message: the template filled with the formatted documents and the question."""
        block = "".join(
            self.prompt.document_template.format(rank=rank, text=self.document_text(doc))
            for rank, doc in enumerate(documents, 1)
        )
        return self.prompt.template.format(documents=block, question=question)

    def text(self, question: str, documents: Sequence[Document]) -> str:
        """The full prompt text the LM reads (chat-formatted when the tokenizer has a template)."""
        message = self.message(question, documents)
        if not self.uses_chat:
            return message
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, text: str) -> list[int]:
        """Ids of a prompt from :meth:`text`: the chat text already holds its special tokens; a plain prompt
        gets the tokenizer's BOS (never a trailing EOS, which would end the prompt)."""
        ids = self.tokenizer(text, add_special_tokens=not self.uses_chat)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if not self.uses_chat and eos is not None and len(ids) > 1 and ids[-1] == eos:
            ids = ids[:-1]
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"gold answer {answer!r} has no tokens: it cannot be scored")
        return ids


def padded_batch(
    prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """``[B, P + A]`` ids/mask/positions with prompts left-padded to end at column ``P`` and answers
    right-padded after them, plus ``labels [B, A]`` (answer ids, ``-100`` on padding)."""
    width_p, width_a = max(map(len, prompts)), max(map(len, answers))
    ids = torch.full((len(prompts), width_p + width_a), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(prompts), width_a), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        ids[row, width_p - len(prompt) : width_p] = torch.tensor(prompt)
        ids[row, width_p : width_p + len(answer)] = torch.tensor(answer)
        mask[row, width_p - len(prompt) : width_p + len(answer)] = 1
        labels[row, : len(answer)] = torch.tensor(answer)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


@torch.no_grad()
def read_batch(
    model: PreTrainedModel,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    pad_id: int,
    max_new_tokens: int,
    reuse_cache: bool = True,
) -> tuple[torch.Tensor, list[list[int]]]:
    """Mean NLL ``[B]`` of each gold answer given its prompt, and the greedy continuation's new token ids.

    ``NLL_b = −(1/|a_b|) Σ_t log p(a_{b,t} | prompt_b, a_{b,<t})``. The logits at columns ``P−1 … P+A−2``
    predict the answer; the cache, cut back to ``P − 1`` columns, lets ``generate`` start at the prompt's
    last token (``reuse_cache=False``: ``generate`` encodes the prompts again; what models whose cache cannot
    be cut get, and the benchmark's reference).
    """
    batch = {k: v.to(model.device) for k, v in padded_batch(prompts, answers, pad_id).items()}
    labels = batch.pop("labels")
    width_a = labels.shape[1]
    width_p = batch["input_ids"].shape[1] - width_a
    out = model(**batch, use_cache=reuse_cache, logits_to_keep=width_a + 1)
    nll = per_example_nll(out.logits[:, :width_a], labels).float().cpu()
    cache = out.past_key_values if reuse_cache else None
    try:  # a negative length drops that many columns: the answer and the prompt's last token
        if cache is not None:
            cache.crop(-(width_a + 1))
    except (AttributeError, ValueError, NotImplementedError):  # a cache that cannot be cut: encode again
        cache = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers ≥ 5.2x renames past_key_values
        generated = model.generate(
            input_ids=batch["input_ids"][:, :width_p],
            attention_mask=batch["attention_mask"][:, :width_p],
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return nll, [row.tolist() for row in generated[:, width_p:].cpu()]


def first_line(text: str) -> str:
    """The generated answer: its first non-empty line, stripped (instruct LMs often explain afterwards)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    precision: str = "fp32",
    reuse_cache: bool = True,
) -> list[tuple[float, str]]:
    """``(answer NLL, generated answer)`` per prompt, in input order; batches sorted by length."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(answers[i])))
    results: list[tuple[float, str]] = [(float("nan"), "")] * len(prompts)
    with autocast_for(precision, model.device):
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            nll, new_tokens = read_batch(
                model,
                [prompts[i] for i in index],
                [answers[i] for i in index],
                pad_id,
                max_new_tokens,
                reuse_cache,
            )
            for row, i in enumerate(index):
                text = tokenizer.decode(new_tokens[row], skip_special_tokens=True)
                results[i] = (float(nll[row]), first_line(text))
    return results
