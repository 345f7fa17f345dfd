"""The frozen LM's input for DREAM: ``[d_1 … d_k ; prompt(q) ; y]`` per query, batched.

The document prefix of every row is left-padded to a common length ``P`` (so "after the documents" is
one absolute position for the whole batch and the prefix can be run once, without gradient, and reused
as a key/value cache); prompt and target follow, right-padded. Position ids count real tokens only, so
padding never shifts a row's positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.batch import moved
from lightning_modules.models.tokenization import plain_token_ids

IGNORE_INDEX = -100


@dataclass
class DreamInputs:
    """A tokenised DREAM batch.

    Attributes:
        input_ids / attention_mask / position_ids: ``[B, P + S]``.
        document_index: ``[B, P]``, the candidate index of each prefix position's document, −1 on padding.
        labels: ``[B, S]``, aligned with the logits of the ``S`` positions after the documents: ``labels[:, s]``
            is the token that the logit at position ``P + s`` predicts when it is a target token, else −100.
        context_length: ``P``, the first position after the documents.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    document_index: torch.Tensor
    labels: torch.Tensor
    context_length: int

    def to(self, device: torch.device | str) -> DreamInputs:
        return moved(self, device)

    @property
    def suffix_length(self) -> int:
        return self.input_ids.shape[1] - self.context_length


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def build_dream_inputs(
    tokenizer: PreTrainedTokenizerBase,
    documents: list[list[str]],
    prompts: list[str],
    targets: list[str],
    max_document_tokens: int = 64,
    max_target_tokens: int = 32,
    document_separator: str = "\n\n",
    append_eos_to_target: bool = False,
    bos_token_id: int | None = None,
) -> DreamInputs:
    """Tokenise ``B`` rows of ``k`` candidate documents, a prompt and a target each.

    ``bos_token_id``: a sequence-start token before the documents (owned by no document, so never biased):
    the LM's attention sink lands on it instead of on the first document's first token.

    Each document is cut to ``max_document_tokens`` and followed by ``document_separator`` (both part of
    its key block); the target is cut to ``max_target_tokens`` (plus the EOS token when
    ``append_eos_to_target``). Prompts must be non-empty: the first target token is predicted from the
    prompt's last position, which lies after the documents and is therefore biased.
    """
    if not (len(documents) == len(prompts) == len(targets)):
        raise ValueError(
            f"got {len(documents)} document lists, {len(prompts)} prompts and {len(targets)} targets"
        )
    if max_document_tokens < 1:
        raise ValueError(f"max_document_tokens must be >= 1, got {max_document_tokens}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    separator = _ids(tokenizer, document_separator)
    rows = []
    for row, (docs, prompt, target) in enumerate(zip(documents, prompts, targets)):
        prefix, owner = ([bos_token_id], [-1]) if bos_token_id is not None else ([], [])
        for j, ids in enumerate(plain_token_ids(tokenizer, docs, max_document_tokens)):
            prefix += ids + separator
            owner += [j] * (len(ids) + len(separator))
        prompt_ids = _ids(tokenizer, prompt)
        if not prompt_ids:
            raise ValueError(
                f"row {row}: the prompt is empty; DREAM needs a prompt between the documents and the target"
            )
        target_ids = plain_token_ids(tokenizer, [target], max_target_tokens)[0] if target else []
        if append_eos_to_target:
            target_ids = target_ids + [tokenizer.eos_token_id]
        if not target_ids:
            raise ValueError(f"row {row}: the target '{target}' tokenises to nothing")
        rows.append((prefix, owner, prompt_ids + target_ids, len(prompt_ids)))
    return assemble_dream_inputs(rows, pad_id)


def assemble_dream_inputs(
    rows: list[tuple[list[int], list[int], list[int], int]], pad_id: int
) -> DreamInputs:
    """Pad ``(document prefix, owner of each prefix position, prompt + target, prompt length)`` rows into a
    batch: prefixes left-padded to one length, suffixes right-padded, labels on the target tokens only."""
    batch = len(rows)
    prefix_length = max(len(prefix) for prefix, _, _, _ in rows)
    suffix_length = max(len(suffix) for _, _, suffix, _ in rows)
    total = prefix_length + suffix_length
    input_ids = torch.full((batch, total), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, total, dtype=torch.long)
    document_index = torch.full((batch, prefix_length), -1, dtype=torch.long)
    labels = torch.full((batch, suffix_length), IGNORE_INDEX, dtype=torch.long)
    for row, (prefix, owner, suffix, n_prompt) in enumerate(rows):
        start = prefix_length - len(prefix)
        input_ids[row, start:prefix_length] = torch.tensor(prefix, dtype=torch.long)
        attention_mask[row, start:prefix_length] = 1
        document_index[row, start:] = torch.tensor(owner, dtype=torch.long)
        input_ids[row, prefix_length : prefix_length + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        attention_mask[row, prefix_length : prefix_length + len(suffix)] = 1
        # logit at suffix position s predicts suffix token s + 1; only target tokens are scored
        for s in range(n_prompt - 1, len(suffix) - 1):
            labels[row, s] = suffix[s + 1]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return DreamInputs(input_ids, attention_mask, position_ids, document_index, labels, prefix_length)


def block_diagonal_mask(inputs: DreamInputs) -> torch.Tensor:
    """Boolean ``[B, 1, L, L]`` mask where each document attends only to itself (and causally).

    Positions after the documents see everything before them; padding is never attended to (a padding
    query attends to itself only, so its softmax stays finite). Used with ``document_attention=block_diagonal``.
    """
    batch, length = inputs.input_ids.shape
    owner = torch.full((batch, length), -1, dtype=torch.long, device=inputs.input_ids.device)
    owner[:, : inputs.context_length] = inputs.document_index
    valid = inputs.attention_mask.to(torch.bool)
    positions = torch.arange(length, device=owner.device)
    causal = positions[:, None] >= positions[None, :]
    same_document = owner[:, :, None] == owner[:, None, :]
    after_documents = (owner == -1)[:, :, None] & (positions >= inputs.context_length)[None, :, None]
    sequence_start = ((owner == -1) & valid & (positions < inputs.context_length)[None])[:, None, :]  # BOS
    allowed = causal[None] & valid[:, None, :] & (same_document | after_documents | sequence_start)
    allowed = allowed | (torch.eye(length, dtype=torch.bool, device=owner.device)[None] & ~valid[:, :, None])
    return allowed[:, None]
