"""LLM2Vec-Gen's collate-time work: the query prompts, the cached responses' ids and the teacher targets.

The responses are generated (or read from the cache) at fit start, before the DataLoader starts, so every
input of a training step is known when a batch is collated: :class:`LLM2VecGenBatchPreparer` builds it
in the DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from datamodules.batch import RetrievalBatch, TokenizedTexts, moved
from lightning_modules.llm2vec_gen.generation import Response
from lightning_modules.llm2vec_gen.prompts import PromptBuilder, pad_token_id, right_pad
from lightning_modules.models.tokenization import plain_token_ids


@dataclass
class ReconstructionInputs:
    """The frozen LM's inputs of one LLM2Vec-Gen step.

    Attributes:
        prompt: ``[B, T]`` left-padded prompt ids of the queries (the special tokens follow them).
        response_ids / response_mask: ``[B, R]`` the LM's own responses, right-padded (EOS appended where
            the LM ended its answer).
        teacher_targets: ``[B, D]`` the teacher's embedding of each response.
    """

    prompt: TokenizedTexts
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    teacher_targets: torch.Tensor

    def to(self, device: torch.device | str) -> ReconstructionInputs:
        return moved(self, device)


def response_token_ids(
    tokenizer: PreTrainedTokenizerBase, responses: Sequence[Response], max_tokens: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids ``[B, R]`` and mask; EOS appended where the LM ended its answer."""
    rows = []
    for response, ids in zip(responses, plain_token_ids(tokenizer, [r.text for r in responses], max_tokens)):
        rows.append([*ids, eos_id] if response.finished or not ids else ids)
    return right_pad(rows, pad_token_id(tokenizer))


@dataclass
class LLM2VecGenBatchPreparer:
    """Builds :class:`ReconstructionInputs` for a batch of training queries.

    Args:
        prompt_builder / instruction: the query prompts' builder and instruction.
        max_response_tokens / eos_id: response truncation and the end-of-response token.
        responses / teacher_targets: per query id, the cached response and its teacher embedding.
    """

    prompt_builder: PromptBuilder
    instruction: str
    max_response_tokens: int
    eos_id: int
    responses: dict[str, Response]
    teacher_targets: dict[str, torch.Tensor]

    def __call__(self, batch: RetrievalBatch) -> RetrievalBatch:
        missing = [q for q in batch.query_ids if q not in self.responses]
        if missing:
            raise KeyError(
                f"no cached response for training queries {missing[:3]}: prepare_responses was not run on them"
            )
        responses = [self.responses[q] for q in batch.query_ids]
        targets = torch.stack([self.teacher_targets[q] for q in batch.query_ids])
        return replace(batch, lm_inputs=self.inputs(batch.queries, responses, targets), prepared=True)

    def inputs(
        self, queries: Sequence[str], responses: Sequence[Response], teacher_targets: torch.Tensor
    ) -> ReconstructionInputs:
        prompt = self.prompt_builder.batch(queries, self.instruction)
        ids, mask = response_token_ids(
            self.prompt_builder.tokenizer, responses, self.max_response_tokens, self.eos_id
        )
        return ReconstructionInputs(
            TokenizedTexts(prompt["input_ids"], prompt["attention_mask"]), ids, mask, teacher_targets
        )
