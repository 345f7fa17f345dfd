"""The frozen LM's passes under a DREAM bias: the document prefix once without gradient (a key/value cache),
then the prompt and target with the bias (:func:`lightning_modules.losses.dream.dream_lm_loss` scores them)."""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache, PreTrainedModel

from lightning_modules.dream.attention import DreamBias
from lightning_modules.dream.inputs import DreamInputs, block_diagonal_mask


class DocumentPrefixCache(DynamicCache):
    """The documents' key/value cache: filled by the prefix pass, then read-only.

    Once :meth:`freeze` is called, ``update`` returns ``cache ++ new`` without storing ``new``: a suffix
    pass reads the documents' keys and values and leaves the cache as it found it. So the same cache can
    serve several suffix passes, and activation checkpointing may recompute a decoder layer in backward
    (the recompute would otherwise append the suffix a second time: ``P + 2S`` keys against a ``P + S`` mask).
    """

    read_only = False

    def freeze(self) -> DocumentPrefixCache:
        self.read_only = True
        return self

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if not self.read_only:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


@torch.no_grad()
def encode_documents_prefix(
    model: PreTrainedModel, inputs: DreamInputs, block_diagonal: bool = False
) -> DocumentPrefixCache:
    """Run the document prefix once without gradient; return its (read-only) key/value cache.

    Exact: the DREAM bias only touches query positions after the documents, so the prefix's keys and
    values do not depend on the retriever scores.
    """
    prefix = slice(0, inputs.context_length)
    mask = (
        block_diagonal_mask(inputs)[:, :, prefix, prefix]
        if block_diagonal
        else inputs.attention_mask[:, prefix]
    )
    output = model(
        input_ids=inputs.input_ids[:, prefix],
        attention_mask=mask,
        position_ids=inputs.position_ids[:, prefix],
        past_key_values=DocumentPrefixCache(config=model.config),
        use_cache=True,
        logits_to_keep=1,
    )
    return output.past_key_values.freeze()


def suffix_logits(
    model: PreTrainedModel,
    inputs: DreamInputs,
    key_bias: torch.Tensor,
    heads: dict[int, tuple[int, ...]],
    document_cache=None,
    block_diagonal: bool = False,
) -> torch.Tensor:
    """Logits ``[B, S, V]`` of the positions after the documents under the DREAM bias ``key_bias [B, P]``.

    With ``document_cache`` (from :func:`encode_documents_prefix`; left unchanged) only prompt and target
    run here; without it the whole sequence runs in one pass (the reference the cache path must equal).
    """
    dream_bias = DreamBias(key_bias=key_bias, context_length=inputs.context_length, heads=heads)
    suffix = slice(inputs.context_length, None)
    if document_cache is not None:
        output = model(
            input_ids=inputs.input_ids[:, suffix],
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids[:, suffix],
            past_key_values=document_cache,
            use_cache=True,
            dream_bias=dream_bias,
        )
        return output.logits
    mask = block_diagonal_mask(inputs) if block_diagonal else inputs.attention_mask
    output = model(
        input_ids=inputs.input_ids,
        attention_mask=mask,
        position_ids=inputs.position_ids,
        use_cache=False,
        dream_bias=dream_bias,
        logits_to_keep=inputs.suffix_length,
    )
    return output.logits


def copy_cache(cache):
    """An independent copy of a key/value cache (a suffix pass appends to a writable cache); a read-only
    :class:`DocumentPrefixCache` is returned as it is, since no pass can change it."""
    if isinstance(cache, DocumentPrefixCache) and cache.read_only:
        return cache
    return copy.deepcopy(cache)
