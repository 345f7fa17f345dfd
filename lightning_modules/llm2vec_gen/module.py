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

from datamodules.batch import RetrievalBatch, TokenizedTexts
from datamodules.protocols import TrainingQueries
from lightning_modules.base import FROZEN_PREFIX, RetrieverModule
from lightning_modules.distributed import call_through_strategy
from lightning_modules.llm2vec_gen.batch import LLM2VecGenBatchPreparer, ReconstructionInputs
from lightning_modules.llm2vec_gen.generation import Response, end_of_response_ids, generate_responses
from lightning_modules.llm2vec_gen.prompts import PromptBuilder
from lightning_modules.llm2vec_gen.settings import LLM2VecGenSettings
from lightning_modules.losses.llm2vec_gen import (
    chunked_reconstruction_loss,
    reconstruction_loss,
    weighted_losses,
)
from lightning_modules.models.chunked import checkpointed_layers
from lightning_modules.models.embedder import Embedder
from lightning_modules.models.registry import resolve_model_path
from lightning_modules.settings import SettingsError, settings_arguments
from retrieval.batching import map_in_length_order
from retrieval.cache import write_json_atomically

Kind = Literal["query", "document"]
TEACHER_PREFIX = "teacher."
TINY_MAX_NEW_TOKENS = 16  # debug=tiny only (frozen_lm.tiny)


class LLM2VecGenModule(settings_arguments(LLM2VecGenSettings), RetrieverModule):
    """The LLM2Vec-Gen LightningModule.

    Args:
        frozen_lm: :class:`FrozenCausalLM` arguments (the backbone that encodes and decodes).
        teacher: :class:`Embedder` arguments of the unsupervised teacher (frozen; reloaded by name, not
            stored in checkpoints). It only ever sees the decoded response text.
        **kwargs: the :class:`LLM2VecGenSettings` fields and the :class:`RetrieverModule` arguments
            (optimizer, scheduler, nan_policy, eval_*). Under ``debug=tiny`` (``frozen_lm.tiny``) the
            response budget is capped at ``TINY_MAX_NEW_TOKENS``: a random tiny LM never emits EOS, and the
            smoke run must stay seconds long.
    """

    def __init__(
        self, frozen_lm: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None, **kwargs: Any
    ):
        if frozen_lm is None or teacher is None:
            raise SettingsError("LLM2Vec-Gen needs model.frozen_lm and model.teacher")
        kwargs.pop("embedder", None)
        settings, base = LLM2VecGenSettings.take(kwargs, RetrieverModule.__init__)
        super().__init__(embedder=None, frozen_lm=frozen_lm, **base)
        self.save_hyperparameters()
        self.settings: LLM2VecGenSettings = settings
        self.teacher = Embedder(**teacher)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.num_special_tokens = settings.num_special_tokens
        self.generation_settings = settings.generation_settings(
            TINY_MAX_NEW_TOKENS if frozen_lm.get("tiny", False) else None
        )
        if self.generation_settings != settings.generation_settings():
            rank_zero_info(f"[llm2vec-gen] debug=tiny: responses capped at {TINY_MAX_NEW_TOKENS} new tokens")
        tokenizer = self.frozen_lm.tokenizer
        self.prompt_builders = {
            kind: PromptBuilder(tokenizer, settings.student_chat_template, settings.max_text_tokens(kind))
            for kind in ("query", "document")
        }
        self.eos_id = end_of_response_ids(tokenizer, self.frozen_lm.model)[0]
        self.build_trainable_parts()
        self.responses: dict[str, Response] = {}
        self.teacher_targets: dict[str, torch.Tensor] = {}

    def build_trainable_parts(self) -> None:
        """The K special tokens and the two heads (the only parameters that train)."""
        settings = self.settings
        embeddings = self.frozen_lm.model.get_input_embeddings().weight.detach().float()
        hidden = embeddings.shape[1]
        noise = torch.randn(settings.num_special_tokens, hidden) * embeddings.std(dim=0)
        self.special_tokens = nn.Parameter(embeddings.mean(dim=0) + noise * settings.special_token_init_std)
        self.special_tokens.no_weight_decay = True
        self.reconstruction_head = nn.Linear(hidden, hidden)
        if settings.reconstruction_init == "identity":
            nn.init.eye_(self.reconstruction_head.weight)
            nn.init.zeros_(self.reconstruction_head.bias)
        self.alignment_head = nn.Linear(hidden, self.teacher.dim)

    # ---- the three pieces of the forward pass ----------------------------------------------------------
    def prompt_tokens(self, texts: Sequence[str], kind: Kind) -> TokenizedTexts:
        batch = self.prompt_builders[kind].batch(texts, self.settings.instruction(kind))
        return TokenizedTexts(batch["input_ids"], batch["attention_mask"]).to(self.device)

    def special_token_states(self, texts: Sequence[str], kind: Kind) -> torch.Tensor:
        """``[B, N, H]`` last-layer states of the last N (``num_pooled_tokens``) of the K special tokens
        appended after each left-padded prompt."""
        return self.prompt_states(self.prompt_tokens(texts, kind))

    def prompt_states(self, prompt: TokenizedTexts) -> torch.Tensor:
        """:meth:`special_token_states` of already tokenised prompts."""
        lm = self.frozen_lm.model
        token_embeddings = lm.get_input_embeddings()(prompt.input_ids)
        count = len(prompt)
        special = self.special_tokens.to(token_embeddings.dtype).unsqueeze(0).expand(count, -1, -1)
        inputs = torch.cat([token_embeddings, special], dim=1)
        mask = torch.cat(
            [prompt.attention_mask, prompt.attention_mask.new_ones(count, self.num_special_tokens)], dim=1
        )
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        with checkpointed_layers(lm, self.settings.frozen_lm_checkpointing and torch.is_grad_enabled()):
            hidden = lm.base_model(
                inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        return hidden[:, -self.settings.pooled_tokens :]

    def represent(self, texts: Sequence[str], kind: Kind) -> tuple[torch.Tensor, torch.Tensor]:
        """``(soft prompt [B, K, H], embedding [B, D_teacher])``: the embedding is ``mean_k alignment(s_k)``."""
        return self.represent_prompt(self.prompt_tokens(texts, kind))

    def represent_prompt(self, prompt: TokenizedTexts) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`represent` of already tokenised prompts."""
        states = self.prompt_states(prompt).float()
        soft_prompt = self.reconstruction_head(states)
        embedding = self.alignment_head(soft_prompt).mean(dim=1)
        return soft_prompt, embedding

    def reconstruction_logits(
        self, soft_prompt: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[B, T, V]`` logits for each response token given **only** ``[soft prompt ; response so far]``."""
        states = self.reconstruction_states(soft_prompt, response_ids, response_mask)
        return self.frozen_lm.model.get_output_embeddings()(states)

    def reconstruction_states(
        self, soft_prompt: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[B, T, H]`` final states that predict each response token (the LM head turns them into logits)."""
        lm = self.frozen_lm.model
        k = soft_prompt.shape[1]
        token_embeddings = lm.get_input_embeddings()(response_ids[:, :-1])
        inputs = torch.cat([soft_prompt.to(token_embeddings.dtype), token_embeddings], dim=1)
        mask = torch.cat([response_mask.new_ones(len(response_ids), k), response_mask[:, :-1]], dim=1).long()
        with checkpointed_layers(lm, self.settings.frozen_lm_checkpointing):
            hidden = lm.base_model(
                inputs_embeds=inputs, attention_mask=mask, use_cache=False
            ).last_hidden_state
        return hidden[:, k - 1 :]

    def step_losses(self, inputs: ReconstructionInputs) -> dict[str, torch.Tensor]:
        """The weighted total and its two parts (:func:`~lightning_modules.losses.llm2vec_gen.llm2vec_gen_loss`)."""
        soft_prompt, embedding = self.represent_prompt(inputs.prompt)
        settings, chunk = self.settings, self.settings.loss_chunk_size
        if chunk == 0:
            logits = self.reconstruction_logits(soft_prompt, inputs.response_ids, inputs.response_mask)
            reconstruction = reconstruction_loss(logits, inputs.response_ids, inputs.response_mask)
        else:
            states = self.reconstruction_states(soft_prompt, inputs.response_ids, inputs.response_mask)
            head = self.frozen_lm.model.get_output_embeddings()
            reconstruction = chunked_reconstruction_loss(
                states, head, inputs.response_ids, inputs.response_mask, chunk
            )
        return weighted_losses(
            reconstruction,
            embedding,
            inputs.teacher_targets,
            settings.reconstruction_weight,
            settings.alignment_weight,
        )

    def losses(
        self, queries: Sequence[str], responses: Sequence[Response], teacher_targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`step_losses` for queries given as texts with their responses."""
        return self.step_losses(
            self.batch_preparer().inputs(queries, responses, teacher_targets).to(self.device)
        )

    def batch_preparer(self) -> LLM2VecGenBatchPreparer:
        return LLM2VecGenBatchPreparer(
            self.prompt_builders["query"],
            self.settings.instruction("query"),
            self.settings.max_response_tokens,
            self.eos_id,
            self.responses,
            self.teacher_targets,
        )

    # ---- training ---------------------------------------------------------------------------------------
    def lm_identity(self) -> str:
        """What identifies the frozen LM's weights for the response cache (resolved folder + dtype)."""
        frozen = self.hparams["frozen_lm"]
        name = frozen["name_or_path"]
        where = (
            f"{name}/{frozen['gguf_file']}"
            if frozen.get("gguf_file")
            else resolve_model_path(name, frozen.get("tiny", False))
        )
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
        # filled in place: the batch preparer may hold these dicts already (Lightning can build the train
        # loader before on_fit_start, e.g. to count the stepping batches for the scheduler)
        self.responses.clear()
        self.responses.update(zip(query_ids, responses))
        self.teacher_targets.clear()
        self.teacher_targets.update(zip(query_ids, targets))
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
        if not isinstance(datamodule, TrainingQueries):
            raise TypeError(
                "LLM2Vec-Gen trains on unlabeled queries: use datamodules.unlabeled_queries.UnlabeledQueryDataModule "
                f"(data=nq_open_queries), not {type(datamodule).__name__}"
            )
        datamodule.setup("fit")
        queries = datamodule.train_queries
        # every rank generates its share of the missing responses and receives the others' (generation.py);
        # under FSDP inside the wrapped forward, where the sharded LM is usable
        summary = call_through_strategy(
            self.trainer,
            self,
            "prepare_responses",
            [q.query_id for q in queries],
            [q.text for q in queries],
            show_progress=self.trainer.is_global_zero,
        )
        rank_zero_info(f"[llm2vec-gen] responses: {summary}")
        if self.trainer.is_global_zero:
            write_json_atomically(Path(self.trainer.default_root_dir) / "generation.json", summary)

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor | None:
        parts = self.step_losses(self.prepared(batch).lm_inputs)
        size = len(batch)
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
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if self.eval_precision in ("bf16", "bfloat16")
            else nullcontext()
        )

        def embed(index: list[int]) -> torch.Tensor:
            _, embedding = self.represent([texts[i] for i in index], kind)
            return F.normalize(embedding.float(), dim=-1).cpu()

        with autocast:
            out = map_in_length_order(
                [len(t) for t in texts],
                self.eval_batch_size,
                embed,
                desc="llm2vec-gen queries" if kind == "query" else "llm2vec-gen documents",
                show_progress=show_progress,
            )
        self.train(was_training)
        return out

    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self.encode(texts, "query", show_progress)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        return self.encode(texts, "document", show_progress)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        params = super().trainable_parameters()
        frozen = [n for n, _ in params if n.startswith((TEACHER_PREFIX, FROZEN_PREFIX))]
        if frozen:
            raise RuntimeError(f"frozen parameters require grad: {frozen[:3]}")
        return params
