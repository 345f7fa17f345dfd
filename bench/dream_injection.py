"""DREAM's one-pass injection vs a two-pass, Revela-style in-batch attention carrying the same signal.

Both turn retriever cosines ``c [B, k]`` over each query's ``k`` candidate documents into a frozen-LM
target NLL whose gradient reaches ``c``:

- **DREAM** (the project's ``lightning_modules.dream``): one sequence ``[d_1 … d_k ; prompt ; y]`` per
  query, the bias ``b_j = log(k · softmax_j(c_j/τ))`` on document ``j``'s keys in the selected heads
  (document prefix run once under ``no_grad``, keys/values reused; the default middle-third heads, and
  all heads for the like-for-like row).
- **Two-pass, Revela-style** (written for this benchmark, after the in-batch attention of Revela,
  TRUMANCFY/Revela): pass 1 runs every candidate document as its own sequence (``B·k`` rows, no grad)
  and keeps its per-layer keys/values; pass 2 runs ``[prompt ; y]``, and in every layer and head its
  queries attend to ``[d_j ; own tokens]`` once per candidate ``j``; the ``k`` outputs are mixed with
  ``w = softmax(c/τ)``. Registered as a transformers ``AttentionInterface`` function like DREAM's.

The time ratio is of a full forward + backward to the cosines, interleaved in one process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from bench.timing import time_interleaved

REVELA_SDPA = "revela_sdpa"
IGNORE_INDEX = -100
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class InBatchDocuments:
    """Pass-1 output that pass 2's attention reads (forward kwarg ``in_batch_documents``).

    Attributes:
        keys / values: per layer, ``[B, k, H_kv, L_d, D]`` (keys after rotary embedding).
        mask: ``[B, k, L_d]`` bool, True on real document tokens.
        weights: ``[B, k]`` mixing weights (``softmax(c/τ)``), differentiable.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    weights: torch.Tensor


def own_allowed(
    attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device
) -> torch.Tensor:
    """``[B, 1, S, S]`` bool (True = may attend) for the suffix's own keys: causal ∧ padding."""
    if attention_mask is not None and attention_mask.ndim == 4:
        if attention_mask.dtype == torch.bool:
            return attention_mask[..., -length:]
        return attention_mask[..., -length:] > torch.finfo(attention_mask.dtype).min / 2
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return causal[None, None].expand(batch, 1, length, length)


def in_batch_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    in_batch_documents: InBatchDocuments | None = None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``Σ_j w_j · Attn(Q, [K_j ; K_own], [V_j ; V_own])`` in every head; ``[B, S, H, D]`` like transformers.

    Without ``in_batch_documents`` (pass 1, the documents themselves) it is transformers' stock SDPA.
    """
    if in_batch_documents is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    docs = in_batch_documents
    layer = module.layer_idx
    batch, heads, length, _ = query.shape
    groups = heads // key.shape[1]
    allowed_own = own_allowed(attention_mask, batch, length, query.device)
    output = torch.zeros_like(query)
    for j in range(docs.mask.shape[1]):
        keys = repeat_kv(torch.cat([docs.keys[layer][:, j], key], dim=2), groups)
        values = repeat_kv(torch.cat([docs.values[layer][:, j], value], dim=2), groups)
        allowed_doc = docs.mask[:, j][:, None, None, :].expand(batch, 1, length, docs.mask.shape[2])
        allowed = torch.cat([allowed_doc, allowed_own], dim=-1)
        attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed, scale=scaling)
        output = output + docs.weights[:, j, None, None, None].to(query.dtype) * attended
    return output.transpose(1, 2).contiguous(), None


def register_in_batch_attention() -> str:
    AttentionInterface.register(REVELA_SDPA, in_batch_attention_forward)
    AttentionMaskInterface.register(REVELA_SDPA, sdpa_mask)
    return REVELA_SDPA


def tokenize_two_pass(
    tokenizer: PreTrainedTokenizerBase,
    documents: list[list[str]],
    prompts: list[str],
    targets: list[str],
    max_document_tokens: int = 64,
    max_target_tokens: int = 32,
    separator: str = "\n\n",
) -> dict[str, torch.Tensor]:
    """Documents ``[B·k, L_d]`` (left-padded) and suffixes ``[B, S]`` (right-padded) with target labels."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    docs = [ids(d)[:max_document_tokens] + ids(separator) for row in documents for d in row]
    if len({len(row) for row in documents}) != 1:
        raise ValueError("every query needs the same number of candidate documents")
    doc_length = max(len(d) for d in docs)
    doc_ids = torch.full((len(docs), doc_length), pad, dtype=torch.long)
    doc_mask = torch.zeros(len(docs), doc_length, dtype=torch.long)
    for row, d in enumerate(docs):
        doc_ids[row, doc_length - len(d) :] = torch.tensor(d)
        doc_mask[row, doc_length - len(d) :] = 1
    suffixes, prompt_lengths = [], []
    for prompt, target in zip(prompts, targets):
        prompt_ids, target_ids = ids(prompt), ids(target)[:max_target_tokens]
        if not prompt_ids or not target_ids:
            raise ValueError(f"empty prompt or target: {prompt!r} / {target!r}")
        suffixes.append(prompt_ids + target_ids)
        prompt_lengths.append(len(prompt_ids))
    length = max(len(s) for s in suffixes)
    suffix_ids = torch.full((len(suffixes), length), pad, dtype=torch.long)
    suffix_mask = torch.zeros(len(suffixes), length, dtype=torch.long)
    labels = torch.full((len(suffixes), length), IGNORE_INDEX, dtype=torch.long)
    for row, (suffix, n_prompt) in enumerate(zip(suffixes, prompt_lengths)):
        suffix_ids[row, : len(suffix)] = torch.tensor(suffix)
        suffix_mask[row, : len(suffix)] = 1
        for s in range(n_prompt - 1, len(suffix) - 1):
            labels[row, s] = suffix[s + 1]
    return {
        "doc_ids": doc_ids,
        "doc_mask": doc_mask,
        "suffix_ids": suffix_ids,
        "suffix_mask": suffix_mask,
        "labels": labels,
    }


def two_pass_loss(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], cosines: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean target NLL of the two-pass in-batch attention; differentiable in ``cosines [B, k]``.

    ``model`` must use the ``revela_sdpa`` attention (:func:`register_in_batch_attention`).
    """
    queries, k = cosines.shape
    with torch.no_grad():
        doc_positions = (batch["doc_mask"].cumsum(dim=1) - 1).clamp(min=0)
        cache = model(
            input_ids=batch["doc_ids"],
            attention_mask=batch["doc_mask"],
            position_ids=doc_positions,
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
    keys = [layer.keys.unflatten(0, (queries, k)) for layer in cache.layers]
    values = [layer.values.unflatten(0, (queries, k)) for layer in cache.layers]
    documents = InBatchDocuments(
        keys,
        values,
        batch["doc_mask"].bool().unflatten(0, (queries, k)),
        torch.softmax(cosines / tau, dim=-1),
    )
    offset = batch["doc_ids"].shape[1]
    positions = offset + torch.arange(batch["suffix_ids"].shape[1]).expand_as(batch["suffix_ids"])
    logits = model(
        input_ids=batch["suffix_ids"],
        attention_mask=batch["suffix_mask"],
        position_ids=positions,
        use_cache=False,
        in_batch_documents=documents,
    ).logits
    labels = batch["labels"]
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def hotpotqa_groups(queries: int, k: int) -> tuple[list[list[str]], list[str], list[str]]:
    """``queries`` HotpotQA questions with their first ``k`` candidate paragraphs and first answer."""
    documents, questions, answers = [], [], []
    for line in (REPO / "datamodules" / "data" / "hotpotqa" / "qa_candidates.jsonl").read_text().splitlines():
        record = json.loads(line)
        if len(record["candidates"]) >= k:
            documents.append([c["text"] for c in record["candidates"][:k]])
            questions.append(record["query"])
            answers.append(record["answers"][0])
        if len(questions) == queries:
            return documents, questions, answers
    raise ValueError(f"the vendored HotpotQA has fewer than {queries} questions with {k} candidates")


def load_lms() -> tuple[Any, Any, Any]:
    """SmolLM2-135M-Instruct twice (DREAM's attention, the two-pass in-batch attention) and its tokenizer."""
    from transformers import AutoTokenizer

    from lightning_modules.dream.attention import attention_name
    from lightning_modules.models.frozen_lm import FrozenCausalLM
    from lightning_modules.models.registry import resolve_model_path

    dream_lm = FrozenCausalLM("smollm2-135m-instruct", attn_implementation=attention_name("sdpa")).model
    revela_lm = FrozenCausalLM(
        "smollm2-135m-instruct", attn_implementation=register_in_batch_attention()
    ).model
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    return dream_lm, revela_lm, tokenizer


def compare(queries: int, k: int, max_document_tokens: int, repeats: int, tau: float = 0.1) -> dict[str, Any]:
    """Interleaved forward + backward times of DREAM (middle-third heads, all heads) and the two-pass."""
    from lightning_modules.dream.heads import middle_third_heads
    from lightning_modules.dream.inputs import build_dream_inputs
    from lightning_modules.losses.dream import document_bias, dream_lm_loss, key_position_bias

    dream_lm, revela_lm, tokenizer = load_lms()
    documents, questions, answers = hotpotqa_groups(queries, k)
    prompts = [f"Question: {q}\nAnswer:" for q in questions]
    targets = [" " + a for a in answers]
    dream_inputs = build_dream_inputs(tokenizer, documents, prompts, targets, max_document_tokens)
    two_pass_batch = tokenize_two_pass(tokenizer, documents, prompts, targets, max_document_tokens)
    config = dream_lm.config
    all_heads = {layer: tuple(range(config.num_attention_heads)) for layer in range(config.num_hidden_layers)}
    middle = middle_third_heads(config.num_hidden_layers, config.num_attention_heads)
    cosines = torch.randn(queries, k, generator=torch.Generator().manual_seed(0)).mul(0.1).add(0.5)

    def dream_step(heads: dict[int, tuple[int, ...]]):
        def step() -> None:
            c = cosines.clone().requires_grad_(True)
            key_bias = key_position_bias(document_bias(c, tau), dream_inputs.document_index)
            dream_lm_loss(dream_lm, dream_inputs, key_bias, heads, reuse_document_cache=True).loss.backward()
            if c.grad is None or not torch.isfinite(c.grad).all():
                raise RuntimeError("DREAM: no finite gradient reached the cosines")

        return step

    def two_pass_step() -> None:
        c = cosines.clone().requires_grad_(True)
        two_pass_loss(revela_lm, two_pass_batch, c, tau).backward()
        if c.grad is None or not torch.isfinite(c.grad).all():
            raise RuntimeError("two-pass: no finite gradient reached the cosines")

    timings = time_interleaved(
        {
            "dream_middle_third_heads": dream_step(middle),
            "dream_all_heads": dream_step(all_heads),
            "two_pass_in_batch_all_heads": two_pass_step,
        },
        repeats=repeats,
        warmup=1,
    )
    two_pass = timings["two_pass_in_batch_all_heads"].median_s
    return {
        "lm": "SmolLM2-135M-Instruct fp32",
        "queries": queries,
        "candidates": k,
        "max_document_tokens": max_document_tokens,
        "tau": tau,
        "dream_sequence_length": int(dream_inputs.input_ids.shape[1]),
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "two_pass_over_dream_middle_third": two_pass / timings["dream_middle_third_heads"].median_s,
        "two_pass_over_dream_all_heads": two_pass / timings["dream_all_heads"].median_s,
    }
