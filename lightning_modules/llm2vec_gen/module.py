"""LLM2Vec-Gen (BehnamGhader et al., 2026): K trainable special tokens after the query, whose last-layer
states encode the frozen LM's own response; the LM and the teacher never change.

Per query ``q`` with cached greedy response ``y`` (docs/llm2vec_gen.md):

1. ``h_1..h_K`` = last-layer states of the K special tokens, fed as a separate ``[K, H]`` parameter
   through ``inputs_embeds`` after the left-padded prompt (no vocabulary resize: SmolLM2 ties input and
   output embeddings, so resized rows would change the LM head).
2. soft prompt ``s_k = reconstruction_head(h_k)`` (H→H); the frozen LM reads **only** ``[s ; y]`` and
   ``CE_recon`` scores ``y`` (never the query: with it in context the loss has a trivial minimum).
3. ``a_k = alignment_head(s_k)`` (H→H_teacher, on top of the reconstruction output, in sequence);
   embedding ``e = mean_k a_k``; ``MSE(e, teacher(y))``.

Only the special tokens (no weight decay) and the two heads train. Documents are embedded the same way
with a document instruction. Retrieval uses ``cos(e_q, e_d)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from tqdm.auto import tqdm

from lightning_modules.base import FROZEN_PREFIX, RetrieverModule
from lightning_modules.llm2vec_gen.generation import (
    DEFAULT_QUERY_INSTRUCTION,
    GenerationSettings,
    Response,
    end_of_response_ids,
    generate_responses,
)
from lightning_modules.llm2vec_gen.prompts import PromptBuilder, pad_token_id, right_pad
from lightning_modules.losses.reconstruction import alignment_loss, reconstruction_loss
from lightning_modules.models.embedder import Embedder
from lightning_modules.models.registry import resolve_model_path, tiny_models_enabled
from retrieval.cache import write_json_atomically

Kind = Literal["query", "document"]
DEFAULT_DOCUMENT_INSTRUCTION = "Summarize the following passage: "
TEACHER_PREFIX = "teacher."
HEAD_INITS = ("identity", "random")
TINY_MAX_NEW_TOKENS = 16  # debug=tiny only (LSR_TINY_MODELS=1)


class LLM2VecGenModule(RetrieverModule):
    """The LLM2Vec-Gen LightningModule.

    Args:
        frozen_lm: :class:`FrozenCausalLM` arguments (the backbone that encodes and decodes).
        teacher: :class:`Embedder` arguments of the unsupervised teacher (frozen; reloaded by name, not
            stored in checkpoints). It only ever sees the decoded response text.
        num_special_tokens: K.
        query_instruction / document_instruction: prefixes inside the user turn (the query one is also the
            generation prompt, so the special tokens sit exactly where the response would start).
        use_chat_template: wrap prompts in the LM's chat template when it has one.
        max_query_tokens / max_document_tokens: truncation of ``instruction + text``.
        max_response_tokens: response tokens reconstructed (the EOS token is appended when the LM stopped).
        reconstruction_weight / alignment_weight: loss weights (reference: 1.0 / 1.0).
        reconstruction_init: ``identity`` [ours: the soft prompt starts as the special-token states] or
            ``random`` (PyTorch's Linear default). The alignment head is always PyTorch's default.
        special_token_init_std: [ours] the K embeddings start at the mean input embedding plus Gaussian
            noise of this many per-dimension standard deviations of the embedding matrix.
        generation: :class:`GenerationSettings` fields except ``instruction`` / ``max_query_tokens`` /
            ``use_chat_template``, which come from the arguments above. Under ``debug=tiny``
            (``LSR_TINY_MODELS=1``) ``max_new_tokens`` is capped at ``TINY_MAX_NEW_TOKENS``: a random tiny
            LM never emits EOS, and the smoke run must stay seconds long.
        **kwargs: :class:`RetrieverModule` arguments (optimizer, scheduler, nan_policy, eval_*).
    """

    def __init__(
        self,
        frozen_lm: dict[str, Any],
        teacher: dict[str, Any],
        num_special_tokens: int = 10,
        query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
        document_instruction: str = DEFAULT_DOCUMENT_INSTRUCTION,
        use_chat_template: bool = True,
        max_query_tokens: int = 64,
        max_document_tokens: int = 128,
        max_response_tokens: int = 128,
        reconstruction_weight: float = 1.0,
        alignment_weight: float = 1.0,
        reconstruction_init: str = "identity",
        special_token_init_std: float = 1.0,
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if frozen_lm is None or teacher is None:
            raise ValueError("LLM2VecGenModule needs model.frozen_lm and model.teacher")
        if num_special_tokens < 1:
            raise ValueError(f"model.num_special_tokens must be >= 1, got {num_special_tokens}")
        if reconstruction_init not in HEAD_INITS:
            raise ValueError(
                f"model.reconstruction_init must be one of {HEAD_INITS}, got '{reconstruction_init}'"
            )
        kwargs.pop("embedder", None)
        super().__init__(embedder=None, frozen_lm=frozen_lm, **kwargs)
        self.save_hyperparameters()
        self.teacher = Embedder(**teacher)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.num_special_tokens = num_special_tokens
        self.instructions = {"query": query_instruction, "document": document_instruction}
        self.max_tokens = {"query": max_query_tokens, "document": max_document_tokens}
        self.max_response_tokens = max_response_tokens
        self.reconstruction_weight = reconstruction_weight
        self.alignment_weight = alignment_weight
        extra = dict(generation or {})
        for key in ("instruction", "max_query_tokens", "use_chat_template"):
            if key in extra:
                raise ValueError(f"model.generation.{key} is set by the module's own argument; remove it")
        if (
            tiny_models_enabled()
            and extra.get("max_new_tokens", GenerationSettings.max_new_tokens) > TINY_MAX_NEW_TOKENS
        ):
            # debug=tiny: a random tiny LM never stops by itself; a smoke run only needs the plumbing
            rank_zero_info(f"[llm2vec-gen] debug=tiny: responses capped at {TINY_MAX_NEW_TOKENS} new tokens")
            extra["max_new_tokens"] = TINY_MAX_NEW_TOKENS
        self.generation_settings = GenerationSettings(
            instruction=query_instruction,
            max_query_tokens=max_query_tokens,
            use_chat_template=use_chat_template,
            **extra,
        )
        tokenizer = self.frozen_lm.tokenizer
        self.prompt_builders = {
            kind: PromptBuilder(tokenizer, use_chat_template, self.max_tokens[kind])
            for kind in ("query", "document")
        }
        self.eos_id = end_of_response_ids(tokenizer, self.frozen_lm.model)[0]

        embeddings = self.frozen_lm.model.get_input_embeddings().weight.detach().float()
        hidden = embeddings.shape[1]
        noise = torch.randn(num_special_tokens, hidden) * embeddings.std(dim=0) * special_token_init_std
        self.special_tokens = nn.Parameter(embeddings.mean(dim=0) + noise)
        self.special_tokens.no_weight_decay = True
        self.reconstruction_head = nn.Linear(hidden, hidden)
        if reconstruction_init == "identity":
            nn.init.eye_(self.reconstruction_head.weight)
            nn.init.zeros_(self.reconstruction_head.bias)
        self.alignment_head = nn.Linear(hidden, self.teacher.dim)
        self.responses: dict[str, Response] = {}
        self.teacher_targets: dict[str, torch.Tensor] = {}

    # ---- the three pieces of the forward pass ----------------------------------------------------------
    def special_token_states(self, texts: Sequence[str], kind: Kind) -> torch.Tensor:
        """``[B, K, H]`` last-layer states of the K special tokens appended after each left-padded prompt."""
        lm = self.frozen_lm.model
        batch = self.prompt_builders[kind].batch(texts, self.instructions[kind])
        input_ids = batch["input_ids"].to(self.device)
        prompt_mask = batch["attention_mask"].to(self.device)
        token_embeddings = lm.get_input_embeddings()(input_ids)
        special = self.special_tokens.to(token_embeddings.dtype).unsqueeze(0).expand(len(texts), -1, -1)
        inputs = torch.cat([token_embeddings, special], dim=1)
        mask = torch.cat([prompt_mask, prompt_mask.new_ones(len(texts), self.num_special_tokens)], dim=1)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        hidden = lm.base_model(
            inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids
        ).last_hidden_state
        return hidden[:, -self.num_special_tokens :]

    def represent(self, texts: Sequence[str], kind: Kind) -> tuple[torch.Tensor, torch.Tensor]:
        """``(soft prompt [B, K, H], embedding [B, D_teacher])``: the embedding is ``mean_k alignment(s_k)``."""
        states = self.special_token_states(texts, kind).float()
        soft_prompt = self.reconstruction_head(states)
        embedding = self.alignment_head(soft_prompt).mean(dim=1)
        return soft_prompt, embedding

    def reconstruction_logits(
        self, soft_prompt: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[B, T, V]`` logits for each response token given **only** ``[soft prompt ; response so far]``."""
        lm = self.frozen_lm.model
        k = soft_prompt.shape[1]
        token_embeddings = lm.get_input_embeddings()(response_ids[:, :-1])
        inputs = torch.cat([soft_prompt.to(token_embeddings.dtype), token_embeddings], dim=1)
        mask = torch.cat([response_mask.new_ones(len(response_ids), k), response_mask[:, :-1]], dim=1).long()
        hidden = lm.base_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return lm.get_output_embeddings()(hidden[:, k - 1 :])

    def response_token_ids(self, responses: Sequence[Response]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded response ids ``[B, T]`` and mask; EOS appended where the LM ended its answer."""
        tokenizer = self.frozen_lm.tokenizer
        rows = []
        for response in responses:
            ids = tokenizer(response.text, add_special_tokens=False)["input_ids"][: self.max_response_tokens]
            rows.append([*ids, self.eos_id] if response.finished or not ids else ids)
        ids, mask = right_pad(rows, pad_token_id(tokenizer))
        return ids.to(self.device), mask.to(self.device)

    def losses(
        self, queries: Sequence[str], responses: Sequence[Response], teacher_targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The weighted total and its two parts for a batch of queries with their cached responses."""
        soft_prompt, embedding = self.represent(queries, "query")
        response_ids, response_mask = self.response_token_ids(responses)
        logits = self.reconstruction_logits(soft_prompt, response_ids, response_mask)
        reconstruction = reconstruction_loss(logits, response_ids, response_mask)
        alignment = alignment_loss(embedding, teacher_targets.to(embedding.device))
        total = self.reconstruction_weight * reconstruction + self.alignment_weight * alignment
        return {"loss": total, "reconstruction": reconstruction, "alignment": alignment}

    # ---- training ---------------------------------------------------------------------------------------
    def lm_identity(self) -> str:
        """What identifies the frozen LM's weights for the response cache (resolved folder + dtype)."""
        frozen = self.hparams["frozen_lm"]
        name = frozen["name_or_path"]
        where = f"{name}/{frozen['gguf_file']}" if frozen.get("gguf_file") else resolve_model_path(name)
        return f"{where}|{frozen.get('dtype', 'float32')}"

    def prepare_responses(
        self, query_ids: Sequence[str], queries: Sequence[str], show_progress: bool = True
    ) -> dict[str, Any]:
        """Generate (or read from cache) the LM's response to every training query, and the teacher's
        embedding of each response. Returns the generation report as a dict."""
        responses, report = generate_responses(
            self.frozen_lm.model,
            self.frozen_lm.tokenizer,
            queries,
            self.generation_settings,
            self.lm_identity(),
            show_progress=show_progress,
        )
        start = time.perf_counter()
        targets = self.teacher.encode(
            [r.text for r in responses], "document", batch_size=self.eval_batch_size
        )
        teacher_seconds = time.perf_counter() - start
        self.responses = dict(zip(query_ids, responses))
        self.teacher_targets = dict(zip(query_ids, targets))
        finished = sum(r.finished for r in responses)
        return {
            "queries": report.total,
            "generated": report.generated,
            "cached": report.cached,
            "generation_seconds": report.seconds,
            "teacher_seconds": round(teacher_seconds, 3),
            "finished_with_eos": finished,
            "mean_response_tokens": round(sum(r.num_tokens for r in responses) / max(len(responses), 1), 1),
            "max_new_tokens": self.generation_settings.max_new_tokens,
            "cache_dir": report.cache_dir,
        }

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "train_queries"):
            raise TypeError(
                f"LLM2VecGenModule trains on unlabeled queries: use datamodules.unlabeled_queries.UnlabeledQueryDataModule "
                f"(data=nq_open_queries), not {type(datamodule).__name__}"
            )
        datamodule.setup("fit")
        queries = datamodule.train_queries
        # under DDP rank 0 generates and caches; the other ranks then read the cache (one barrier each side)
        strategy = self.trainer.strategy
        if not self.trainer.is_global_zero:
            strategy.barrier("llm2vec_gen_responses")
        summary = self.prepare_responses([q.query_id for q in queries], [q.text for q in queries])
        if self.trainer.is_global_zero:
            strategy.barrier("llm2vec_gen_responses")
        rank_zero_info(f"[llm2vec-gen] responses: {summary}")
        if self.trainer.is_global_zero:
            write_json_atomically(Path(self.trainer.default_root_dir) / "generation.json", summary)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        missing = [q for q in batch["query_ids"] if q not in self.responses]
        if missing:
            raise KeyError(
                f"no cached response for training queries {missing[:3]}: prepare_responses was not run on them"
            )
        responses = [self.responses[q] for q in batch["query_ids"]]
        targets = torch.stack([self.teacher_targets[q] for q in batch["query_ids"]])
        parts = self.losses(batch["queries"], responses, targets)
        size = len(batch["queries"])
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=size)
        self.log("train/reconstruction", parts["reconstruction"], prog_bar=True, batch_size=size)
        self.log("train/alignment", parts["alignment"], batch_size=size)
        return self.checked_loss(parts["loss"], batch_idx)

    # ---- retrieval interface used by the evaluation callback -------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], kind: Kind, show_progress: bool = False) -> torch.Tensor:
        """L2-normalised embeddings ``[N, D_teacher]`` (float32, CPU, input order), length-sorted batches."""
        if len(texts) == 0:
            return torch.empty(0, self.teacher.dim)
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.teacher.dim)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if self.eval_precision in ("bf16", "bfloat16")
            else nullcontext()
        )
        starts = range(0, len(order), self.eval_batch_size)
        with autocast:
            for start in tqdm(
                starts,
                desc="llm2vec-gen queries" if kind == "query" else "llm2vec-gen documents",
                disable=not show_progress,
                leave=False,
            ):
                index = order[start : start + self.eval_batch_size]
                _, embedding = self.represent([texts[i] for i in index], kind)
                out[index] = F.normalize(embedding.float(), dim=-1).cpu()
        self.train(was_training)
        return out

    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self.encode(texts, "query", show_progress)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self.encode(texts, "document", show_progress)

    # ---- checkpoints: neither the frozen LM nor the teacher is stored -----------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "state_dict" in checkpoint:
            for key, value in self.teacher.state_dict(prefix=TEACHER_PREFIX).items():
                checkpoint["state_dict"].setdefault(key, value)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        params = super().trainable_parameters()
        frozen = [n for n, _ in params if n.startswith((TEACHER_PREFIX, FROZEN_PREFIX))]
        if frozen:
            raise RuntimeError(f"frozen parameters require grad: {frozen[:3]}")
        return params
