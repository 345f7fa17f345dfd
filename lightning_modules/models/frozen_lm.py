"""The frozen causal LM every method learns from: loaded by hub name, local folder, alias or GGUF file.

Its parameters never receive gradients (``requires_grad_(False)``) and it stays in eval mode even when
Lightning puts the surrounding module in training mode. Gradients may still flow *through* its
activations (DREAM, LLM2Vec-Gen). It is never saved in training checkpoints: methods reload it by name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lightning_modules.models.registry import resolve_model_path

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from: {', '.join(DTYPES)})")
    return DTYPES[dtype]


def load_frozen_lm(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    tiny: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``AutoModelForCausalLM`` + tokenizer, frozen and in eval mode.

    ``gguf_file`` loads a GGUF file from the folder ``name_or_path`` (dequantised by transformers);
    ``tiny`` the tiny random model of the name's family instead (``debug=tiny``).
    """
    path = resolve_model_path(name_or_path, tiny=tiny) if gguf_file is None else name_or_path
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        if not (Path(path) / gguf_file).exists():
            raise FileNotFoundError(f"GGUF file '{gguf_file}' not found in '{path}'")
        kwargs["gguf_file"] = gguf_file
    tokenizer = load_tokenizer(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=parse_dtype(dtype), attn_implementation=attn_implementation, **kwargs
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def load_tokenizer(path: str, **kwargs) -> PreTrainedTokenizerBase:
    """``AutoTokenizer``, except for the tiny model folders (``tiny-<family>-*``): their word-level tokenizer
    is loaded as saved. transformers 5 otherwise rebuilds it as the family's own class (tiny-qwen2 becomes a
    byte-level ``Qwen2Tokenizer`` that encodes "A" to no token and "the river" to six letters)."""
    folder = Path(path)
    if folder.name.startswith("tiny-") and (folder / ".complete").exists() and "gguf_file" not in kwargs:
        return PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    return AutoTokenizer.from_pretrained(path, **kwargs)


class FrozenCausalLM(nn.Module):
    """A frozen causal LM and its tokenizer; ``train()`` never takes it out of eval mode."""

    def __init__(
        self,
        name_or_path: str,
        dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        tiny: bool = False,
    ):
        super().__init__()
        self.name_or_path = name_or_path
        self.model, self.tokenizer = load_frozen_lm(
            name_or_path, dtype, attn_implementation, gguf_file, trust_remote_code, tiny
        )

    def train(self, mode: bool = True) -> FrozenCausalLM:  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
