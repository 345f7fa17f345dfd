"""Stored document states: ``Z_d`` for a whole corpus, computed once and cached on disk.

``Z_d`` depends only on the frozen LM, the prompt's prefix/document template, ``K`` and the document text,
never on the predictor, so one computation serves every evaluation of every run with the same LM and
prompt. The cache file is keyed by a digest of all of these (and the precision) and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from lightning_modules.distributed import max_over_ranks
from lightning_modules.rabtriever.passes import RelevanceLM, autocast_for
from retrieval.cache import cache_root, save_tensors_atomically


def document_states_key(
    lm_name: str, relevance_lm: RelevanceLM, documents: Sequence[str], precision: str
) -> str:
    """A digest of everything ``Z_d`` depends on."""
    prompt = relevance_lm.prompt
    digest = hashlib.sha1()
    header = {
        "lm": lm_name,
        "document_template": prompt.document_template,
        "chat": prompt.chat,
        "max_document_tokens": prompt.max_document_tokens,
        "K": relevance_lm.num_document_states,
        "precision": precision,
        "prefix": relevance_lm.ids.document_ids([""])[0],
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for text in documents:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


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
    order = sorted(range(len(documents)), key=lambda i: -len(documents[i]))
    out = torch.empty(len(documents), relevance_lm.num_document_states, relevance_lm.hidden_size)
    with autocast_for(precision, relevance_lm.device):
        for start in tqdm(
            range(0, len(order), batch_size), desc="document states", disable=not show_progress, leave=False
        ):
            index = order[start : start + batch_size]
            out[index] = relevance_lm.document_states([documents[i] for i in index]).float().cpu()
    return out


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
    """:func:`compute_document_states` through the on-disk cache (``<cache>/rabtriever/states-<key>.pt``).

    Returns the states and the seconds their computation took (when they were computed, even if read back
    from the cache now): a one-off cost reported outside the training budget. ``lockstep`` (an FSDP-sharded
    LM): the cache is used only when every rank finds it, so all ranks compute or none does.
    """
    path = (
        cache_root()
        / "rabtriever"
        / f"states-{document_states_key(lm_name, relevance_lm, documents, precision)}.pt"
    )
    found = use_disk and path.exists()
    if lockstep:
        found = max_over_ranks(0 if found else 1) == 0
    if found:
        stored = torch.load(path, weights_only=True)
        if stored["states"].shape[0] == len(documents):
            return stored["states"], float(stored["seconds"])
    start = time.perf_counter()
    states = compute_document_states(relevance_lm, documents, batch_size, precision, show_progress)
    seconds = time.perf_counter() - start
    rank_zero_info(
        f"[rabtriever] document states for {len(documents)} documents: {seconds:.1f} s ({precision})"
    )
    if use_disk:
        save_tensors_atomically(path, {"states": states, "seconds": torch.tensor(seconds)})
    return states, seconds
