"""Corpus encoding: the project's ``Embedder.encode`` against sentence-transformers ``encode``.

Same model (all-MiniLM-L6-v2), same texts, same max sequence length and batch size; sentence-transformers
in fp32 is the reference for speed (docs/s) and for the embeddings (cosine per text). The runs are
interleaved in one process, so the ratios share the machine's load. A second part times SmolLM2-135M
(decoder, the lab's embedder start) in fp32, bf16 autocast and bf16 weights, and profiles where a bf16
autocast forward spends its time.

The default corpus is SciFact's abstracts (CC BY-NC: copied to /tmp at run time, never vendored) when
``/work/shared/data/scifact`` exists, else the vendored HotpotQA corpus.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.timing import time_interleaved

SCIFACT_SOURCE = Path("/work/shared/data/scifact")


def corpus_texts(source: str | Path | None, docs: int, seed: int = 0) -> tuple[list[str], str]:
    """``docs`` texts (title + text) sampled with ``seed`` from a BEIR ``corpus.jsonl``; the name of the source.

    ``source=None`` takes SciFact from the shared lab folder (copied to a temporary folder first) or,
    without it, the vendored HotpotQA corpus.
    """
    from datamodules.beir import load_corpus
    from datamodules.paths import resolve_data_path

    if source is None:
        if (SCIFACT_SOURCE / "corpus.jsonl").exists():
            tmp = Path(tempfile.mkdtemp(prefix="lsr-bench-scifact-"))
            shutil.copy(SCIFACT_SOURCE / "corpus.jsonl", tmp / "corpus.jsonl")
            source, name = tmp, "scifact (BEIR, CC BY-NC; copied at run time)"
        else:
            source, name = resolve_data_path("hotpotqa"), "hotpotqa (vendored)"
    else:
        name = str(source)
    documents = list(load_corpus(Path(source) / "corpus.jsonl").values())
    if docs > len(documents):
        raise ValueError(f"asked for {docs} documents but {source}/corpus.jsonl has {len(documents)}")
    chosen = random.Random(seed).sample(documents, docs)
    return [d.as_text() for d in chosen], name


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest row-wise cosine between two ``[N, H]`` embedding matrices."""
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


def compare_with_sentence_transformers(
    texts: list[str], max_length: int, batch_size: int, repeats: int, warmup_texts: int = 64
) -> dict[str, Any]:
    """docs/s and embedding agreement of Embedder.encode (fp32, bf16 autocast, bf16 weights) vs ST fp32."""
    from sentence_transformers import SentenceTransformer

    from lightning_modules.models.embedder import Embedder
    from lightning_modules.models.registry import resolve_model_path

    path = resolve_model_path("all-minilm-l6-v2")
    reference = SentenceTransformer(path, device="cpu")
    reference.max_seq_length = max_length
    ours = Embedder("all-minilm-l6-v2", pooling="mean", normalize=True, max_length=max_length)
    outputs: dict[str, torch.Tensor] = {}

    def st_encode(sample: list[str]) -> torch.Tensor:
        return reference.encode(
            sample, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True
        )

    def ours_encode(sample: list[str], precision: str) -> torch.Tensor:
        return ours.encode(sample, "document", batch_size=batch_size, precision=precision)

    variants = {
        "sentence_transformers_fp32": lambda sample: st_encode(sample),
        "project_fp32": lambda sample: ours_encode(sample, "fp32"),
        "project_bf16_autocast": lambda sample: ours_encode(sample, "bf16-autocast"),
        "project_bf16": lambda sample: ours_encode(sample, "bf16"),
    }
    for fn in variants.values():  # warm-up on a slice (allocator, oneDNN kernels), untimed
        fn(texts[:warmup_texts])

    def timed(name: str):
        def call() -> None:
            outputs[name] = variants[name](texts)

        return call

    timings = time_interleaved({name: timed(name) for name in variants}, repeats=repeats, warmup=0)
    reference_embeddings = outputs["sentence_transformers_fp32"].cpu()
    base = timings["sentence_transformers_fp32"].median_s
    result: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2",
        "texts": len(texts),
        "max_length": max_length,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "variants": {},
    }
    for name, timing in timings.items():
        result["variants"][name] = {
            "docs_per_s": len(texts) / timing.median_s,
            "speedup_vs_sentence_transformers_fp32": base / timing.median_s,
            "min_cosine_vs_sentence_transformers_fp32": min_cosine(outputs[name].cpu(), reference_embeddings),
            "timing": timing.as_dict(),
        }
    return result


def smollm_precisions(texts: list[str], max_length: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """SmolLM2-135M mean-pooled encoding in fp32, bf16 autocast and bf16 weights (interleaved), plus a
    profile of one bf16-autocast batch by op kind."""
    from bench.train_step import op_kind
    from lightning_modules.models.embedder import Embedder

    embedder = Embedder("smollm2-135m-instruct", pooling="mean", normalize=True, max_length=max_length)
    outputs: dict[str, torch.Tensor] = {}
    precisions = {"fp32": "fp32", "bf16_autocast": "bf16-autocast", "bf16_weights": "bf16"}
    for precision in precisions.values():
        embedder.encode(texts[:batch_size], "document", batch_size=batch_size, precision=precision)

    def timed(name: str, precision: str):
        def call() -> None:
            outputs[name] = embedder.encode(texts, "document", batch_size=batch_size, precision=precision)

        return call

    timings = time_interleaved({n: timed(n, p) for n, p in precisions.items()}, repeats=repeats, warmup=0)
    base = timings["fp32"].median_s
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (mean pooling)",
        "texts": len(texts),
        "max_length": max_length,
        "batch_size": batch_size,
        "variants": {},
    }
    for name, timing in timings.items():
        result["variants"][name] = {
            "docs_per_s": len(texts) / timing.median_s,
            "speedup_vs_fp32": base / timing.median_s,
            "min_cosine_vs_fp32": min_cosine(outputs[name], outputs["fp32"]),
            "timing": timing.as_dict(),
        }
    result["profile_one_batch"] = {
        name: profile_kinds(embedder, texts[:batch_size], precision, op_kind)
        for name, precision in precisions.items()
    }
    return result


def profile_kinds(embedder: Any, texts: list[str], precision: str, kind_of) -> dict[str, Any]:
    """Share of CPU self time by op kind for one encode batch, and the op with the most time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        embedder.encode(texts, "document", batch_size=len(texts), precision=precision)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 and e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares: dict[str, float] = {}
    for event in events:
        shares[kind_of(event.key)] = shares.get(kind_of(event.key), 0.0) + event.self_cpu_time_total / total
    casts = sum(e.count for e in events if e.key in ("aten::_to_copy",))
    top = max(events, key=lambda e: e.self_cpu_time_total)
    return {
        "share_by_kind": {k: round(v, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "dtype_casts": casts,
        "top_op": top.key,
        "top_op_share": round(top.self_cpu_time_total / total, 3),
    }


def smollm_forward_precisions(batch: int, length: int, repeats: int) -> dict[str, Any]:
    """One SmolLM2-135M forward of ``[batch, length]`` tokens: fp32, fp32 weights under bf16 autocast, and a
    bf16 copy of the weights made beforehand (its one-off cast timed separately), interleaved."""
    import copy

    from transformers import AutoModel

    from lightning_modules.models.registry import resolve_model_path

    fp32 = AutoModel.from_pretrained(resolve_model_path("smollm2-135m-instruct"), dtype=torch.float32).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    ids = torch.randint(
        0, fp32.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def forward(model: torch.nn.Module, autocast: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def cast_weights() -> None:
        {name: p.to(torch.bfloat16) for name, p in fp32.named_parameters()}

    timings = time_interleaved(
        {
            "fp32": lambda: forward(fp32, False),
            "bf16_autocast": lambda: forward(fp32, True),
            "bf16_weights": lambda: forward(bf16, False),
            "weight_cast_once_per_encode_call": cast_weights,
        },
        repeats=repeats,
        warmup=1,
    )
    base = timings["fp32"].median_s
    return {
        "batch": batch,
        "length": length,
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "speedup_vs_fp32": {
            name: base / t.median_s
            for name, t in timings.items()
            if name != "weight_cast_once_per_encode_call"
        },
    }
