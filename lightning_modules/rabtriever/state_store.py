"""Stored document states: ``Z_d`` for a whole corpus, computed once and cached on disk.

``Z_d`` depends only on the frozen LM, the prompt's prefix/document template, ``K`` and the document text,
never on the predictor, so one computation serves every evaluation of every run with the same LM and
prompt. The cache file is keyed by a digest of all of these (and the precision) and written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.distributed import max_over_ranks
from lightning_modules.rabtriever.passes import RelevanceLM, autocast_for
from retrieval.batching import map_in_length_order
from retrieval.cache import cache_key, cache_root, cached_tensors


def document_states_key(
    lm_name: str, relevance_lm: RelevanceLM, documents: Sequence[str], precision: str
) -> str:
    """A digest of everything ``Z_d`` depends on."""
    prompt = relevance_lm.prompt
    header = {
        "lm": lm_name,
        "document_template": prompt.document_template,
        "chat": prompt.chat,
        "max_document_tokens": prompt.max_document_tokens,
        "K": relevance_lm.num_document_states,
        "precision": precision,
        "prefix": relevance_lm.ids.document_ids([""])[0],
    }
    return cache_key(header, documents)[:20]


@torch.no_grad()
def compute_document_states(
    relevance_lm: RelevanceLM,
    documents: Sequence[str],
    batch_size: int = 32,
    precision: str = "bf16",
    show_progress: bool = False,
) -> torch.Tensor:
    """``[N, K, H]`` float32 ``Z_d`` on CPU, in input order (batches sorted by length to save padding)."""
    if not documents:
        return torch.empty(0, relevance_lm.num_document_states, relevance_lm.hidden_size)
    with autocast_for(precision, relevance_lm.device):
        return map_in_length_order(
            [len(d) for d in documents],
            batch_size,
            lambda index: relevance_lm.document_states([documents[i] for i in index]).float().cpu(),
            desc="document states",
            show_progress=show_progress,
        )


def cached_document_states(
    lm_name: str,
    relevance_lm: RelevanceLM,
    documents: Sequence[str],
    batch_size: int = 32,
    precision: str = "bf16",
    use_disk: bool = True,
    show_progress: bool = False,
    lockstep: bool = False,
) -> tuple[torch.Tensor, float]:
    """:func:`compute_document_states` through the checksummed on-disk cache
    (``<cache>/rabtriever/states-<key>.checked``; a damaged entry is recomputed; the suffix keeps the
    older unchecked ``.pt`` files of earlier versions apart).

    Returns the states and the seconds their computation took (when they were computed, even if read back
    from the cache now): a one-off cost reported outside the training budget. ``lockstep`` (an FSDP-sharded
    LM): the cache is used only when every rank finds it, so all ranks compute or none does.
    """
    key = document_states_key(lm_name, relevance_lm, documents, precision)
    path = cache_root() / "rabtriever" / f"states-{key}.checked"

    def compute() -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        states = compute_document_states(relevance_lm, documents, batch_size, precision, show_progress)
        seconds = time.perf_counter() - start
        rank_zero_info(
            f"[rabtriever] document states for {len(documents)} documents: {seconds:.1f} s ({precision})"
        )
        return {"states": states, "seconds": torch.tensor(seconds)}

    every_rank = (lambda found: max_over_ranks(0 if found else 1) == 0) if lockstep else None
    stored = cached_tensors(path, compute, every_rank) if use_disk else compute()
    return stored["states"], float(stored["seconds"])
