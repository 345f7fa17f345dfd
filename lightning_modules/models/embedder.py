"""The trainable embedder ``E``: any HF encoder or decoder, pooled, optionally L2-normalised and LoRA-adapted.

``s(q, d) = cos(E(q), E(d)) / τ`` in every method (README, "Models"); the temperature lives
in the losses, not here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from transformers import AutoModel

from datamodules.batch import TokenizedTexts
from lightning_modules.models.attention import attn_implementation_for
from lightning_modules.models.frozen_lm import load_tokenizer, parse_dtype
from lightning_modules.models.pooling import POOLINGS, pool
from lightning_modules.models.registry import resolve_model_path
from lightning_modules.models.tokenization import EmbedderTokenizer, Kind
from retrieval.batching import map_in_length_order

ENCODE_PRECISIONS = ("fp32", "float32", "bf16", "bfloat16", "bf16-autocast")
DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


class Embedder(nn.Module):
    """Embeds texts with a HF backbone.

    Args:
        name_or_path: hub name, local folder or registry alias (``all-minilm-l6-v2``, ``smollm2-135m-instruct``).
        pooling: ``cls``, ``mean`` or ``last`` (last non-padding token; padding goes left for it).
        normalize: L2-normalise embeddings (cosine similarity).
        query_instruction / document_instruction: text prefixed to queries / documents.
        max_length: truncation length in tokens (the appended EOS included).
        lora: ``None`` for full fine-tuning, else peft ``LoraConfig`` arguments (``{}`` takes DEFAULT_LORA).
        append_eos: append the tokenizer's EOS token (common for decoder last-token pooling).
        dtype: backbone weights dtype.
        gradient_checkpointing: recompute backbone activations in backward.
        attention: ``causal`` (the model's own) or ``bidirectional`` (every token sees every non-padding
            token, LLM2Vec's encoder; ``lightning_modules/models/attention.py``).
        tiny: load the tiny random model of ``name_or_path``'s family instead (``debug=tiny``).
    """

    def __init__(
        self,
        name_or_path: str,
        pooling: str = "mean",
        normalize: bool = True,
        query_instruction: str = "",
        document_instruction: str = "",
        max_length: int = 256,
        lora: dict[str, Any] | None = None,
        append_eos: bool = False,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        attention: str = "causal",
        tiny: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}' (choose from: {', '.join(POOLINGS)})")
        self.name_or_path = name_or_path
        self.pooling = pooling
        self.normalize = normalize
        self.instructions = {"query": query_instruction, "document": document_instruction}
        self.max_length = max_length
        self.append_eos = append_eos
        self.attention = attention
        implementation = attn_implementation_for(attention)
        path = resolve_model_path(name_or_path, tiny=tiny)
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left" if pooling == "last" else "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.text_tokenizer = EmbedderTokenizer(self.tokenizer, self.instructions, max_length, append_eos)
        if append_eos and self.tokenizer.eos_token_id is None:
            raise ValueError(f"append_eos=True but the tokenizer of '{name_or_path}' has no EOS token")
        backbone = AutoModel.from_pretrained(
            path,
            dtype=parse_dtype(dtype),
            trust_remote_code=trust_remote_code,
            **({"attn_implementation": implementation} if implementation else {}),
        )
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora_config = None
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            self.lora_config = {**DEFAULT_LORA, **dict(lora)}
            backbone = get_peft_model(backbone, LoraConfig(**self.lora_config))
        self.backbone = backbone
        self.backbone.train()  # from_pretrained returns eval mode; the trainable embedder trains with dropout

    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: Sequence[str], kind: Kind) -> dict[str, torch.Tensor]:
        """Tokenise with the instruction prefix for ``kind``, truncation, and padding, as tensors."""
        tokens = self.text_tokenizer(texts, kind)
        return {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T]`` → embeddings ``[B, H]`` (float32 or wider, L2-normalised when ``normalize``)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # pooling in fp32 for bf16 weights too (fp64 stays fp64: the DDP/FSDP tests compare in fp64)
        embeddings = pool(
            hidden.to(torch.promote_types(hidden.dtype, torch.float32)), attention_mask, self.pooling
        )
        return F.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def embed(self, texts: Sequence[str], kind: Kind) -> torch.Tensor:
        """Embed with gradients (training)."""
        return self.embed_tokens(self.text_tokenizer(texts, kind).to(self.device))

    def embed_tokens(self, tokens: TokenizedTexts) -> torch.Tensor:
        """Embed texts tokenised by :attr:`text_tokenizer` (e.g. in a collator), with gradients."""
        return self(tokens.input_ids, tokens.attention_mask)

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        kind: Kind,
        batch_size: int = 64,
        precision: str = "fp32",
        show_progress: bool = False,
        desc: str | None = None,
    ) -> torch.Tensor:
        """Embed many texts without gradients: tokenise once, sort by length, pad per batch.

        ``precision="bf16"`` runs the backbone on a bf16 copy of its weights, made once per call (LoRA
        included; autocast under FSDP), pooling in fp32: measured faster than bf16 autocast on CPU, which
        casts every linear layer's input at every call (``docs/performance.md``). ``"bf16-autocast"`` keeps
        autocast. Returns float32 ``[N, H]`` on CPU, in input order.
        """
        if precision not in ENCODE_PRECISIONS:
            choices = ", ".join(ENCODE_PRECISIONS)
            raise ValueError(f"unknown encode precision '{precision}' (choose from: {choices})")
        if len(texts) == 0:
            return torch.empty(0, self.dim)
        was_training = self.training
        self.eval()
        ids = self.text_tokenizer.token_ids(texts, kind)
        device = self.device
        bf16 = precision in ("bf16", "bfloat16", "bf16-autocast")
        use_autocast = precision == "bf16-autocast" or (bf16 and self.is_sharded())
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_autocast else nullcontext()
        weights = self.parameters_as(torch.bfloat16) if bf16 and not use_autocast else None

        def embed_rows(index: list[int]) -> torch.Tensor:
            tokens = self.text_tokenizer.pad([ids[i] for i in index]).to(device)
            batch = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
            embeddings = self(**batch) if weights is None else functional_call(self, weights, kwargs=batch)
            return embeddings.float().cpu()

        with autocast:
            out = map_in_length_order(
                [len(row) for row in ids],
                batch_size,
                embed_rows,
                desc=desc or ("encode queries" if kind == "query" else "encode documents"),
                show_progress=show_progress,
            )
        self.train(was_training)
        return out

    def is_sharded(self) -> bool:
        """Whether FSDP manages these parameters (bf16 encoding then uses autocast, not a weight copy)."""
        names = (type(m).__name__ for m in self.modules())
        return any("FullyShardedDataParallel" in name or name.startswith("FSDP") for name in names)

    def parameters_as(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Detached copies of the floating-point parameters in ``dtype``, for ``torch.func.functional_call``
        (buffers such as rotary frequencies keep their dtype)."""
        return {name: p.detach().to(dtype) for name, p in self.named_parameters() if p.is_floating_point()}

    def encode_queries(self, texts: Sequence[str], **kwargs) -> torch.Tensor:
        return self.encode(texts, "query", **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs) -> torch.Tensor:
        return self.encode(texts, "document", **kwargs)

    def merged_backbone(self) -> nn.Module:
        """The backbone with any LoRA weights merged in (a copy; the training model is untouched)."""
        if self.lora_config is None:
            return self.backbone
        return copy.deepcopy(self.backbone).merge_and_unload()

    def save_pretrained(self, path: str | Path, model_card: str | None = None) -> Path:
        """Export as a sentence-transformers folder (plain HF weights + pooling/normalize modules + prompts)."""
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        if self.attention != "causal":
            raise NotImplementedError(
                "a bidirectional embedder cannot be exported as a sentence-transformers folder: a plain "
                "load would run it with causal attention (load it with Embedder(..., attention='bidirectional'))"
            )
        path = Path(path)
        hf_dir = path / "_hf"
        self.merged_backbone().save_pretrained(hf_dir)
        self.export_tokenizer().save_pretrained(hf_dir)
        # plain-text modality only: with a chat template, sentence-transformers 6 would otherwise render
        # every input through it, which is not how this embedder was trained
        transformer = Transformer(
            str(hf_dir),
            max_seq_length=self.max_length,
            module_output_name="token_embeddings",
            modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        )
        transformer.tokenizer.padding_side = self.tokenizer.padding_side
        modes = {"cls": "cls", "mean": "mean", "last": "lasttoken"}
        modules: list[nn.Module] = [transformer, Pooling(self.dim, pooling_mode=modes[self.pooling])]
        if self.normalize:
            modules.append(Normalize())
        prompts = {k: v for k, v in self.instructions.items() if v}
        model = SentenceTransformer(modules=modules, prompts=prompts or None, device="cpu")
        model.save(str(path))
        import shutil

        shutil.rmtree(hf_dir, ignore_errors=True)
        (path / "lsr_embedder.json").write_text(json.dumps(self.export_config(), indent=2) + "\n")
        if model_card:
            (path / "README.md").write_text(model_card)
        return path

    def export_tokenizer(self):
        """A copy of the tokenizer that, when ``append_eos``, appends EOS itself (so plain
        sentence-transformers / HF users get the inputs this embedder was trained on)."""
        tokenizer = copy.deepcopy(self.tokenizer)
        if self.append_eos:
            from tokenizers import processors

            eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
            append = processors.TemplateProcessing(
                single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
            )
            current = tokenizer.backend_tokenizer.post_processor
            tokenizer.backend_tokenizer.post_processor = (
                processors.Sequence([current, append]) if current else append
            )
        return tokenizer

    def export_config(self) -> dict[str, Any]:
        return {
            "source": self.name_or_path,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "query_instruction": self.instructions["query"],
            "document_instruction": self.instructions["document"],
            "max_length": self.max_length,
            "append_eos": self.append_eos,
            "attention": self.attention,
            "lora": self.lora_config,
        }
