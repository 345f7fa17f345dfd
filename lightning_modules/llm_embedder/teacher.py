"""Teacher scoring with the frozen LM: per-task templates, the ``nll`` or ``rank_aware`` reward, batched,
with a progress bar, cached on disk and resumable (see :mod:`score_cache`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from lightning_modules.distributed import all_gather_objects, is_sharded, max_over_ranks, padded_share
from lightning_modules.llm_embedder.rewards import (
    mean_output_log_likelihood,
    prompt_and_output_ids,
    rank_aware_reward,
    sample_mean_log_likelihoods,
    sampling_seed,
)
from lightning_modules.llm_embedder.score_cache import ScoreCache, item_key
from lightning_modules.llm_embedder.settings import TeacherSettings
from lightning_modules.llm_embedder.templates import split_template
from lightning_modules.models.frozen_lm import FrozenCausalLM
from lightning_modules.models.tokenization import plain_token_ids
from retrieval.cache import cache_key


@dataclass(frozen=True)
class ScoringItem:
    """One (key, query, desired output) triple to score under a template."""

    key: str
    query: str
    answer: str


@dataclass
class ScoringReport:
    items: int
    cached: int
    scored: int
    seconds: float


def lm_identity(lm: FrozenCausalLM) -> dict[str, Any]:
    """What makes two frozen LMs score alike: name, architecture, config and a fingerprint of the weights."""
    model = lm.model
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if not k.startswith("_") and k != "transformers_version"
    }
    embedding = model.get_input_embeddings().weight
    sample = embedding.detach().flatten()[:4096].float().cpu().numpy().tobytes()
    return {
        "name": lm.name_or_path,
        "class": type(model).__name__,
        "config": cache_key(config),
        "dtype": str(embedding.dtype),
        "weights": hashlib.sha1(sample).hexdigest(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


class TeacherScorer:
    """Scores (key, query, answer) triples with a frozen LM, through a disk cache.

    Args:
        lm: the frozen causal LM.
        settings: :class:`TeacherSettings` (or its fields as keyword arguments).
    """

    def __init__(self, lm: FrozenCausalLM, settings: TeacherSettings | None = None, **kwargs: Any):
        self.lm = lm
        self.settings = settings if settings is not None else TeacherSettings.from_dict(kwargs)
        # read now, while every rank holds the whole LM: after FSDP wraps it, parameter sizes are per shard
        self._identity: dict[str, Any] = lm_identity(lm)
        self._caches: dict[str, ScoreCache] = {}
        # (template, item) -> cache key: the training step looks its batch up without tokenising it again
        self._item_keys: dict[str, dict[ScoringItem, str]] = {}

    @property
    def reward(self) -> str:
        return self.settings.reward

    # ---- cache --------------------------------------------------------------------------------------------
    def namespace(self, template: str) -> dict[str, Any]:
        """Everything besides the texts that changes a score."""
        reward: dict[str, Any] = {"kind": self.reward}
        if self.reward == "rank_aware":
            reward.update(
                num_samples=self.settings.num_samples,
                max_new_tokens=self.settings.max_new_tokens,
                temperature=self.settings.sample_temperature,
                tie_break=self.settings.tie_break,
                seed=self.settings.seed,
            )
        return {
            "lm": self._identity,
            "template": template,
            "scored": "answer_tokens",  # since the icl fix: the line break before the answer is not scored
            "reward": reward,
            "key_max_tokens": self.settings.key_max_tokens,
            "output_max_tokens": self.settings.output_max_tokens,
        }

    def cache(self, template: str) -> ScoreCache:
        if template not in self._caches:
            self._caches[template] = ScoreCache(self.namespace(template), self.settings.cache_dir)
        return self._caches[template]

    # ---- prompts ------------------------------------------------------------------------------------------
    def _truncate(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut to its first ``max_tokens`` tokens (decoded), or unchanged when it has no more;
        one tokenizer call for all of them, one decode call for those cut."""
        ids = plain_token_ids(self.lm.tokenizer, texts, max_tokens + 1)
        long = [i for i, row in enumerate(ids) if len(row) > max_tokens]
        cut = dict(zip(long, self.lm.tokenizer.batch_decode([ids[i][:max_tokens] for i in long])))
        return [cut.get(i, text) for i, text in enumerate(texts)]

    def prompts(self, template: str, items: Sequence[ScoringItem]) -> list[tuple[str, str]]:
        """The (prompt, desired output) strings of each item, key and output truncated."""
        for item in items:
            if not item.answer.strip():
                raise ValueError(
                    f"empty desired output for query {item.query[:80]!r}: the teacher needs an answer"
                )
        keys = self._truncate([item.key for item in items], self.settings.key_max_tokens)
        answers = self._truncate([item.answer for item in items], self.settings.output_max_tokens)
        return [split_template(template, k, item.query, a) for item, k, a in zip(items, keys, answers)]

    def prompt(self, template: str, item: ScoringItem) -> tuple[str, str]:
        """The (prompt, desired output) strings of one item, key and output truncated."""
        return self.prompts(template, [item])[0]

    # ---- scoring ------------------------------------------------------------------------------------------
    def keys(self, template: str, items: Sequence[ScoringItem]) -> list[str]:
        """The cache key of each item; an item is tokenised once per process (its key is remembered)."""
        self._remember_keys(template, items)
        known = self._item_keys[template]
        return [known[item] for item in items]

    def _remember_keys(
        self, template: str, items: Sequence[ScoringItem]
    ) -> dict[ScoringItem, tuple[str, str]]:
        """Remember the keys of the items not seen before; return their (prompt, output) pairs."""
        known = self._item_keys.setdefault(template, {})
        new = [item for item in dict.fromkeys(items) if item not in known]
        pairs = dict(zip(new, self.prompts(template, new))) if new else {}
        known.update((item, item_key(*pair)) for item, pair in pairs.items())
        return pairs

    def score(
        self, template: str, items: Sequence[ScoringItem], rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, ScoringReport]:
        """Scores of ``items`` (cache first), and what was scored.

        Distributed, every rank calls this with its own items: the ranks agree on the missing ones (the
        union of their gaps), each scores an equal share of them (padded: under FSDP every rank must run
        the same number of forwards) and the fresh scores are all-gathered, so every rank returns the
        scores of its items without reading another rank's files (no shared filesystem needed)."""
        start = time.perf_counter()
        cache = self.cache(template)
        cache.refresh()
        pairs = self._remember_keys(template, items)  # prompts of the items new to this process
        known = self._item_keys[template]
        keys = [known[item] for item in items]
        gaps = dict.fromkeys(cache.missing(keys))
        unscored = list(dict.fromkeys(item for item, key in zip(items, keys) if key in gaps))
        again = [item for item in unscored if item not in pairs]  # seen before, yet not in the cache
        pairs.update(zip(again, self.prompts(template, again)) if again else ())
        missing = {known[item]: pairs[item] for item in unscored}
        if world_size > 1:
            missing = {k: v for part in all_gather_objects(missing) for k, v in part.items()}
        mine, real = padded_share(list(missing), rank, world_size) if missing else ([], 0)
        fresh = self._score_share(cache, [missing[k] for k in mine], mine[:real])
        if world_size > 1:
            everything = {k: v for part in all_gather_objects(fresh) for k, v in part.items()}
            cache.refresh()  # with a shared cache folder the other ranks' chunks are already there
            cache.add(everything)
        report = ScoringReport(
            items=len(items),
            cached=sum(1 for k in keys if k not in missing),
            scored=real,
            seconds=time.perf_counter() - start,
        )
        return cache.get(keys), report

    def _score_share(
        self, cache: ScoreCache, pairs: list[tuple[str, str]], real_keys: list[str]
    ) -> dict[str, float]:
        """Score ``pairs`` in chunks; the first ``len(real_keys)`` are stored, the rest is padding."""
        fresh: dict[str, float] = {}
        progress = tqdm(
            total=len(real_keys),
            desc=f"teacher scores ({self.reward})",
            disable=not self.settings.show_progress or not real_keys,
        )
        for chunk_start in range(0, len(pairs), self.settings.chunk_size):
            values = self._score_pairs(pairs[chunk_start : chunk_start + self.settings.chunk_size]).tolist()
            chunk = dict(zip(real_keys[chunk_start : chunk_start + self.settings.chunk_size], values))
            cache.add(chunk)
            fresh.update(chunk)
            progress.update(len(chunk))
        progress.close()
        return fresh

    def lookup(
        self, template: str, items: Sequence[ScoringItem], rank: int = 0, world_size: int = 1
    ) -> torch.Tensor:
        """Cached scores of ``items``; any still missing are scored now (so training never stops on a cache
        miss). Distributed: if any rank misses a score, all ranks score together (:meth:`score`)."""
        cache = self.cache(template)
        keys = self.keys(template, items)
        if cache.missing(keys):
            cache.refresh()
        misses = len(cache.missing(keys))
        if (max_over_ranks(misses) if world_size > 1 else misses) > 0:
            return self.score(template, items, rank, world_size)[0]
        return cache.get(keys)

    def _score_pairs(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        tokenizer, model = self.lm.tokenizer, self.lm.model
        ids = [prompt_and_output_ids(tokenizer, prompt, output) for prompt, output in pairs]
        prompts = [p for p, _ in ids]
        outputs = [o for _, o in ids]
        desired = mean_output_log_likelihood(
            model, prompts, outputs, tokenizer.pad_token_id, self.settings.batch_size
        )
        if self.reward == "nll":
            return desired
        synced = torch.distributed.is_initialized() and is_sharded(model)  # FSDP: every step is collective
        threads = torch.get_num_threads()
        if self.settings.generation_threads:
            torch.set_num_threads(self.settings.generation_threads)
        try:
            samples = torch.stack(
                [
                    sample_mean_log_likelihoods(
                        model,
                        prompt_ids,
                        self.settings.num_samples,
                        self.settings.max_new_tokens,
                        tokenizer.eos_token_id,
                        tokenizer.pad_token_id,
                        self.settings.sample_temperature,
                        sampling_seed(self.settings.seed, item_key(*pair)),
                        synced_gpus=synced,
                    )
                    for prompt_ids, pair in zip(prompts, pairs)
                ]
            )
        finally:
            torch.set_num_threads(threads)
        return rank_aware_reward(desired, samples, self.settings.tie_break)
