"""What the frozen LM says about a (key, query) pair: the log-likelihood of the desired output, samples of
its own outputs, and the two rewards built from them.

- ``nll`` reward (the reference code): ``r(q, k) = −NLL(o | k, q) / |o| = mean_t log p(o_t | k, q, o_<t)``.
- ``rank_aware`` reward ([ours], the paper's "ranking position of the desired output among N sampled
  outputs"): sample N outputs from the LM given (k, q); rank ``o`` among ``{o} ∪ samples`` by mean token
  log-probability; ``r = 1/rank``; keys with the same rank are ordered by the desired output's likelihood
  through a tie-break term smaller than half the smallest gap between two ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.losses.token_nll import token_nll
from retrieval.batching import map_in_length_order


def prompt_and_output_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, output: str
) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the tokenizer's BOS when it adds one) and of the output (no specials)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if (
        tokenizer.eos_token_id is not None
        and len(prompt_ids) > 1
        and prompt_ids[-1] == tokenizer.eos_token_id
    ):
        prompt_ids = prompt_ids[:-1]  # tokenizers that append EOS would end the prompt early
    output_ids = tokenizer(output, add_special_tokens=False)["input_ids"]
    return prompt_ids, output_ids


@torch.no_grad()
def mean_output_log_likelihood(
    model: PreTrainedModel,
    prompts: Sequence[list[int]],
    outputs: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """``[N]`` mean log-probability per output token, ``mean_t log p(o_t | prompt, o_<t)``, batched.

    Sequences are sorted by length and right-padded; only the output positions are scored. An empty output
    raises (its likelihood is undefined).
    """
    if len(prompts) != len(outputs):
        raise ValueError(f"{len(prompts)} prompts but {len(outputs)} outputs")
    for index, output in enumerate(outputs):
        if not output:
            raise ValueError(f"output {index} has no tokens: the teacher needs a non-empty desired output")
    if not prompts:
        return torch.empty(0, dtype=torch.float64)
    device = next(model.parameters()).device

    def score(index: list[int]) -> torch.Tensor:
        sequences = [list(prompts[i]) + list(outputs[i]) for i in index]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(index), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(index), width), dtype=torch.long)
        target_mask = torch.zeros((len(index), width), dtype=torch.bool)
        for row, i in enumerate(index):
            length = len(sequences[row])
            input_ids[row, :length] = torch.tensor(sequences[row])
            attention[row, :length] = 1
            target_mask[row, len(prompts[i]) : length] = True
        input_ids, predicted = input_ids.to(device), target_mask[:, 1:].to(device)  # t predicts token t+1
        logits = model(input_ids=input_ids, attention_mask=attention.to(device)).logits
        # only the output positions' rows, in fp32, on the model's device: no [B, L, V] copy to the host
        token_log_probs = -token_nll(logits[:, :-1][predicted].float(), input_ids[:, 1:][predicted])
        rows = predicted.nonzero()[:, 0]
        sums = torch.zeros(len(index), dtype=torch.float64, device=device)
        sums = sums.index_add_(0, rows, token_log_probs.double())
        return (sums / predicted.sum(dim=1).double()).cpu()

    return map_in_length_order([len(p) + len(o) for p, o in zip(prompts, outputs)], batch_size, score)


@torch.no_grad()
def sample_mean_log_likelihoods(
    model: PreTrainedModel,
    prompt_ids: list[int],
    num_samples: int,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    temperature: float = 1.0,
    seed: int = 0,
    synced_gpus: bool = False,
) -> torch.Tensor:
    """``[num_samples]`` mean log-probability (under the LM itself, temperature 1) of outputs sampled from
    the LM after ``prompt_ids`` (ancestral sampling at ``temperature``, no top-k/top-p), up to the first EOS
    (excluded). A sample that is empty (EOS first) gets ``−inf``. Seeded per call, so a cached score does not
    depend on which other prompts were scored in the same run. ``synced_gpus``: step until every rank is
    done (an FSDP-sharded LM)."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            **({"synced_gpus": True} if synced_gpus else {}),
        )
    tokens = generated.sequences[:, input_ids.shape[1] :]
    logits = torch.stack(generated.logits, dim=1).float()  # [N, T, V], raw (before sampling warpers)
    # reduced to [N, T] on the model's device: the full-vocabulary logits never go to the host
    token_log_probs, tokens = (-token_nll(logits, tokens)).cpu(), tokens.cpu()
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if eos_token_id is not None:
        is_eos = tokens == eos_token_id
        keep = torch.cumsum(is_eos.long(), dim=1) == 0  # everything before the first EOS
    counts = keep.sum(dim=1)
    sums = (token_log_probs * keep).sum(dim=1)
    means = sums / counts.clamp(min=1)
    return torch.where(counts > 0, means, torch.full_like(means, float("-inf"))).double()


def rank_aware_reward(desired: torch.Tensor, samples: torch.Tensor, tie_break: bool = True) -> torch.Tensor:
    """``1/rank`` of the desired output among ``{o} ∪ samples`` by mean log-likelihood ([ours]).

    Args:
        desired: ``[M]`` mean log-likelihood of the desired output for M (key, query) pairs.
        samples: ``[M, N]`` mean log-likelihoods of N sampled outputs per pair.
        tie_break: add ``exp(desired) / (2 N (N + 1))`` (the geometric-mean token probability, in (0, 1]),
            which orders pairs of equal rank by likelihood yet never crosses a rank gap
            (``1/r − 1/(r+1) ≥ 1/(N(N+1))`` for ranks up to ``N+1``).

    ``rank = 1 + #{samples strictly more likely than o}``: a sample equal to ``o`` does not push it down.
    Example: ``desired = [-1.0]``, ``samples = [[-0.5, -2.0, -3.0, -4.0]]``: rank 2, reward ``0.5`` (+ tie-break).
    """
    if desired.dim() != 1 or samples.dim() != 2 or samples.shape[0] != desired.shape[0]:
        raise ValueError(
            f"desired must be [M] and samples [M, N]; got {tuple(desired.shape)} and {tuple(samples.shape)}"
        )
    num_samples = samples.shape[1]
    rank = 1 + (samples > desired.unsqueeze(1)).sum(dim=1)
    reward = 1.0 / rank.double()
    if tie_break and num_samples > 0:
        reward = reward + desired.double().exp() / (2 * num_samples * (num_samples + 1))
    return reward


def sampling_seed(base_seed: int, key: str) -> int:
    """A per-item seed: the same item always draws the same samples."""
    return int(hashlib.sha1(f"{base_seed}:{key}".encode()).hexdigest()[:8], 16)
