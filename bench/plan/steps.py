"""One training step of each method, built from the experiment's config at the recipe's sizes.

Each builder returns a :class:`PlannedStep`: every model the method holds during training, and a function
that runs the step's forward and returns the loss. The shapes are the recipe's worst case (every text at
its truncation length, the batch from ``data.*``); the code paths are the training code's own pieces
(``embed_in_chunks``, ``candidate_cosines``/``document_bias``, the LLM2Vec-Gen losses, the Rabtriever
predictor), so a setting that changes memory in training (``encode_chunk_size``, ``loss_chunk_size``,
``gradient_checkpointing``) changes the plan the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.plan.models import build_embedder, build_frozen_lm, embed_fn, token_ids
from lightning_modules.losses.dream import candidate_cosines, document_bias
from lightning_modules.losses.llm2vec_gen import (
    chunked_reconstruction_loss,
    reconstruction_loss,
    weighted_losses,
)
from lightning_modules.losses.token_nll import token_nll
from lightning_modules.models.chunked import checkpointed_layers, embed_in_chunks
from lightning_modules.rabtriever.predictor import CrossAttentionPredictor, MLPPredictor


@dataclass(frozen=True)
class Lengths:
    """Token lengths the config leaves to the data: queries and the prompt text around them."""

    query_tokens: int = 64
    prompt_tokens: int = 32


@dataclass
class PlannedStep:
    models: nn.ModuleDict
    forward: Callable[[], torch.Tensor]


def ones(rows: int, length: int, device: str) -> torch.Tensor:
    return torch.ones(rows, length, dtype=torch.long, device=device)


def with_bias_from(layer: nn.Module, signal: torch.Tensor):
    """Make ``layer``'s output depend on ``signal`` (DREAM's bias enters the first biased layer's attention),
    so autograd keeps that layer's and every later layer's activations, as in the real biased pass."""

    def hook(module, args, output):
        zero = signal.sum().to(torch.float32) * 0
        if isinstance(output, tuple):
            return (output[0] + zero.to(output[0].dtype), *output[1:])
        return output + zero.to(output.dtype)

    return layer.register_forward_hook(hook)


def dream_step(
    model: dict[str, Any], data: dict[str, Any], lengths: Lengths, device: str, tiny: bool
) -> PlannedStep:
    """Embed queries and candidates with gradients, bias the middle third of the frozen LM's layers, target NLL."""
    spec = model["embedder"]
    backbone, lm = build_embedder(spec, device, tiny), build_frozen_lm(model["frozen_lm"], device, tiny)
    batch, group = data["batch_size"], data["group_size"]
    query_len, doc_len = min(lengths.query_tokens, spec["max_length"]), spec["max_length"]
    prefix_len = group * (model.get("max_document_tokens", 64) + 2)
    target_len = model.get("max_target_tokens", 32)
    suffix_len = lengths.query_tokens + lengths.prompt_tokens + target_len
    chunk = model.get("encode_chunk_size", 0)
    vocab = lm.config.vocab_size

    def forward() -> torch.Tensor:
        embed = embed_fn(backbone, spec)
        embedder_vocab = backbone.config.vocab_size
        queries = embed_in_chunks(
            embed, token_ids(batch, query_len, device, embedder_vocab), ones(batch, query_len, device), chunk
        )
        docs = embed_in_chunks(
            embed,
            token_ids(batch * group, doc_len, device, embedder_vocab),
            ones(batch * group, doc_len, device),
            chunk,
        )
        candidates = torch.arange(batch * group, device=device).view(batch, group)
        bias = document_bias(candidate_cosines(queries, docs, candidates), model.get("tau_attn", 0.1))
        with torch.no_grad():
            cache = lm(
                input_ids=token_ids(batch, prefix_len, device, vocab), use_cache=True, logits_to_keep=1
            )
        handle = with_bias_from(lm.model.layers[lm.config.num_hidden_layers // 3], bias)
        try:
            out = lm(
                input_ids=token_ids(batch, suffix_len, device, vocab),
                past_key_values=cache.past_key_values,
                use_cache=True,
                logits_to_keep=target_len,
            )
        finally:
            handle.remove()
        return token_nll(out.logits, token_ids(batch, target_len, device, vocab)).mean()

    return PlannedStep(nn.ModuleDict({"embedder": backbone, "frozen_lm": lm}), forward)


def llm2vec_gen_step(
    model: dict[str, Any], data: dict[str, Any], lengths: Lengths, device: str, tiny: bool
) -> PlannedStep:
    """Special tokens through the frozen LM (prompt pass), then the response reconstructed from the soft prompt."""
    lm = build_frozen_lm(model["frozen_lm"], device, tiny)
    teacher_spec = {**model["teacher"], "name_or_path": model["frozen_lm"]["name_or_path"], "lora": None}
    teacher = (
        build_embedder(teacher_spec, device, tiny).requires_grad_(False).eval()
    )  # LLM2Vec of the same LM
    hidden, k = lm.config.hidden_size, model.get("num_special_tokens", 10)
    with torch.device(device):
        heads = nn.ModuleDict(
            {"reconstruction": nn.Linear(hidden, hidden), "alignment": nn.Linear(hidden, hidden)}
        )
        special = nn.Parameter(torch.zeros(k, hidden))
    batch, vocab = data["batch_size"], lm.config.vocab_size
    prompt_len = model.get("max_query_tokens", 64) + lengths.prompt_tokens
    response_len = model.get("max_response_tokens", 128) + 1
    chunk, recompute = model.get("loss_chunk_size", 0), model.get("frozen_lm_checkpointing", False)

    def forward() -> torch.Tensor:
        embeddings = lm.get_input_embeddings()
        prompt = embeddings(token_ids(batch, prompt_len, device, vocab))
        inputs = torch.cat([prompt, special.to(prompt.dtype).expand(batch, -1, -1)], dim=1)
        with checkpointed_layers(lm, recompute):
            states = lm.base_model(inputs_embeds=inputs, use_cache=False).last_hidden_state[:, -k:].float()
        soft = heads["reconstruction"](states)
        embedding = heads["alignment"](soft).mean(dim=1)
        response = token_ids(batch, response_len, device, vocab)
        mask = torch.ones_like(response, dtype=torch.bool)
        inputs = torch.cat([soft.to(prompt.dtype), embeddings(response[:, :-1])], dim=1)
        with checkpointed_layers(lm, recompute):
            final = lm.base_model(inputs_embeds=inputs, use_cache=False).last_hidden_state[:, k - 1 :]
        head = lm.get_output_embeddings()
        reconstruction = (
            chunked_reconstruction_loss(final, head, response, mask, chunk)
            if chunk
            else reconstruction_loss(head(final), response, mask)
        )
        targets = torch.zeros(batch, hidden, device=device)
        return weighted_losses(reconstruction, embedding, targets)["loss"]

    models = nn.ModuleDict({"frozen_lm": lm, "teacher": teacher, "heads": heads})
    models.register_parameter("special_tokens", special)
    return PlannedStep(models, forward)


def llm_embedder_step(
    model: dict[str, Any], data: dict[str, Any], lengths: Lengths, device: str, tiny: bool
) -> PlannedStep:
    """One teacher scoring batch without gradient, then queries and keys embedded with gradients."""
    spec = model["embedder"]
    backbone, lm = build_embedder(spec, device, tiny), build_frozen_lm(model["frozen_lm"], device, tiny)
    teacher = model.get("teacher", {})
    batch, length = data["batch_size"], spec["max_length"]
    group = max((task.get("group_size", 8) for task in (data.get("tasks") or {}).values()), default=8)
    teacher_len = (
        teacher.get("key_max_tokens", 512) + teacher.get("output_max_tokens", 128) + lengths.query_tokens
    )
    teacher_rows, vocab = teacher.get("batch_size", 16), lm.config.vocab_size

    def forward() -> torch.Tensor:
        with torch.no_grad():
            ids = token_ids(teacher_rows, teacher_len, device, vocab)
            token_nll(lm(input_ids=ids).logits, ids).mean(dim=-1)
        embed = embed_fn(backbone, spec)
        embedder_vocab = backbone.config.vocab_size
        queries = embed(token_ids(batch, min(lengths.query_tokens, length), device, embedder_vocab), None)
        keys = embed(token_ids(batch * group, length, device, embedder_vocab), None).view(batch, group, -1)
        scores = torch.einsum("bh,bgh->bg", queries, keys) / model.get("temperature", 0.01)
        target = torch.zeros(batch, dtype=torch.long, device=device)
        teacher_scores = torch.zeros_like(scores).log_softmax(dim=-1)
        distillation = F.kl_div(
            scores.log_softmax(dim=-1), teacher_scores, log_target=True, reduction="batchmean"
        )
        return F.cross_entropy(scores, target) + distillation

    return PlannedStep(nn.ModuleDict({"embedder": backbone, "frozen_lm": lm}), forward)


def rabtriever_step(
    model: dict[str, Any], data: dict[str, Any], lengths: Lengths, device: str, tiny: bool
) -> PlannedStep:
    """One teacher pass batch without gradient, then the predictor and its reverse KL over the vocabulary."""
    lm = build_frozen_lm(model["frozen_lm"], device, tiny)
    spec, hidden = model.get("predictor", {}), lm.config.hidden_size
    kind = CrossAttentionPredictor if spec.get("kind") == "cross_attention" else MLPPredictor
    options = {"num_heads": spec.get("num_heads", 8)} if kind is CrossAttentionPredictor else {}
    with torch.device(device):
        predictor = kind(hidden, spec.get("inner_size", 1024), **options)
    prompt = model.get("prompt", {})
    pass_len = (
        prompt.get("max_document_tokens", 128) + prompt.get("max_query_tokens", 64) + lengths.prompt_tokens
    )
    pairs = data["batch_size"] * (data["group_size"] + model.get("on_policy_top_m", 4))
    states, rows, vocab = (
        model.get("num_document_states", 8),
        model.get("lm_batch_size", 16),
        lm.config.vocab_size,
    )

    def forward() -> torch.Tensor:
        with torch.no_grad():
            lm.model(input_ids=token_ids(rows, pass_len, device, vocab))
            teacher = torch.zeros(pairs, hidden, device=device, dtype=lm.dtype)
            teacher_logits = lm.lm_head(lm.model.norm(teacher)).float().log_softmax(dim=-1)
        query_states = torch.zeros(pairs, hidden, device=device)
        document_states = torch.zeros(pairs, states, hidden, device=device)
        normed = lm.model.norm(predictor(query_states, document_states).to(lm.dtype))
        student = lm.lm_head(normed).float().log_softmax(dim=-1)
        reverse_kl = F.kl_div(teacher_logits, student, log_target=True, reduction="batchmean")
        return F.mse_loss(normed.float(), teacher.float()) + reverse_kl

    return PlannedStep(nn.ModuleDict({"frozen_lm": lm, "predictor": predictor}), forward)


STEPS = {
    "dream": dream_step,
    "llm2vec_gen": llm2vec_gen_step,
    "llm_embedder": llm_embedder_step,
    "rabtriever": rabtriever_step,
}
