"""The architecture numbers (``config.json`` values) of the hub models the cluster recipes train with.

Hub downloads are not needed to plan memory: a model built from these numbers on the ``meta`` device has
the same parameter and activation shapes as the downloaded one. Other names (offline aliases, the tiny
``debug=tiny`` models, local folders) read their own ``config.json`` through the registry.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from lightning_modules.models.registry import resolve_model_path, tiny_family_for, tiny_model_folder

_LLAMA_32 = {"vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 131072}
_QWEN = {"vocab_size": 151936, "rope_theta": 1000000.0, "max_position_embeddings": 32768}
_LLAMA_1B = {
    **_LLAMA_32,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "tie_word_embeddings": True,
}
_LLAMA_3B = {
    **_LLAMA_32,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": True,
}
_QWEN25_05B = {
    **_QWEN,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}

ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "meta-llama/Llama-3.2-1B": ("llama", _LLAMA_1B),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama", _LLAMA_1B),
    "meta-llama/Llama-3.2-3B": ("llama", _LLAMA_3B),
    "meta-llama/Llama-3.2-3B-Instruct": ("llama", _LLAMA_3B),
    "meta-llama/Llama-2-7b-chat-hf": (
        "llama",
        {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
    ),
    "Qwen/Qwen2.5-0.5B": ("qwen2", _QWEN25_05B),
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2", _QWEN25_05B),
    "Qwen/Qwen2.5-1.5B-Instruct": (
        "qwen2",
        {
            **_QWEN,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
        },
    ),
    "Qwen/Qwen3-0.6B": (
        "qwen3",
        {
            **_QWEN,
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": True,
        },
    ),
    "Qwen/Qwen2-7B-Instruct": (
        "qwen2",
        {
            **_QWEN,
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "tie_word_embeddings": False,
        },
    ),
    "BAAI/bge-base-en": (
        "bert",
        {
            "vocab_size": 30522,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
        },
    ),
}


def architecture(name: str, tiny: bool = False) -> PretrainedConfig:
    """The config of model ``name``: from the table above, else its own ``config.json`` (no download for the
    offline aliases and local folders; ``tiny``: the ``debug=tiny`` stand-in of its family)."""
    if tiny:
        return AutoConfig.from_pretrained(str(tiny_model_folder(tiny_family_for(name))))
    if name in ARCHITECTURES:
        model_type, values = ARCHITECTURES[name]
        return AutoConfig.for_model(model_type, **values)
    return AutoConfig.from_pretrained(resolve_model_path(name))
