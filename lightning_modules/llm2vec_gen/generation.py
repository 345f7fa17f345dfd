"""The frozen LM's own greedy responses to unlabeled queries: batched, cached on disk, resumable.

LLM2Vec-Gen trains its special tokens to reconstruct what the frozen LM *would* answer (docs/llm2vec_gen.md).
Responses are generated once per (LM, prompt, query, generation settings) and cached under
``<cache_root>/llm2vec_gen_responses/<LM and settings hash>/``: every finished batch is written as its
own shard file through a temp file + rename, so a killed run loses at most the batch in flight and the
next run generates only what is missing. The end of a response is the tokenizer's / generation config's
EOS token, never a hard-coded string; special-token strings are stripped from the text.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.distributed import (
    all_gather_objects,
    is_sharded,
    padded_share,
    rank,
    union_over_ranks,
    world_size,
)
from lightning_modules.llm2vec_gen.prompts import PromptBuilder, left_pad, pad_token_id
from retrieval.cache import cache_root, write_json_atomically

DEFAULT_QUERY_INSTRUCTION = "Generate a passage that best answers this question: "


@dataclass(frozen=True)
class GenerationSettings:
    """What determines a response (all but ``batch_size`` are part of the cache key).

    Args:
        instruction: prefixed to the query inside the user turn.
        max_new_tokens: generation budget (the lab uses ≤ 128; the reference ≤ 500).
        max_query_tokens: truncation of ``instruction + query`` in tokens.
        use_chat_template: wrap the prompt in the tokenizer's chat template when it has one.
        batch_size: queries per ``generate`` call (does not change greedy outputs, so not in the key).
    """

    instruction: str = DEFAULT_QUERY_INSTRUCTION
    max_new_tokens: int = 128
    max_query_tokens: int = 64
    use_chat_template: bool = True
    batch_size: int = 16

    def key_fields(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


@dataclass(frozen=True)
class Response:
    text: str
    num_tokens: int
    finished: bool  # the LM emitted an end-of-response token within the budget


@dataclass(frozen=True)
class GenerationReport:
    total: int
    generated: int
    cached: int
    seconds: float
    cache_dir: str


class ResponseCache:
    """Shards of ``{entry key: response}`` in one folder per (LM, settings)."""

    def __init__(self, lm_id: str, settings: GenerationSettings, root: Path | None = None):
        self.lm_id = lm_id
        self.settings = settings
        identity = json.dumps({"lm": lm_id, **settings.key_fields()}, sort_keys=True)
        self.folder = (
            (root or cache_root())
            / "llm2vec_gen_responses"
            / hashlib.sha1(identity.encode()).hexdigest()[:16]
        )

    def key(self, query: str, prompt_ids: Sequence[int]) -> str:
        """Hash of (LM, settings, query, the exact prompt token ids)."""
        payload = json.dumps(
            {"lm": self.lm_id, **self.settings.key_fields(), "query": query, "prompt": list(prompt_ids)},
            sort_keys=True,
        )
        return hashlib.sha1(payload.encode()).hexdigest()

    def load(self) -> dict[str, Response]:
        entries: dict[str, Response] = {}
        if not self.folder.is_dir():
            return entries
        for shard in sorted(self.folder.glob("shard-*.json")):
            try:
                table = json.loads(shard.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue  # shards are written atomically; a foreign broken file is ignored and regenerated
            for key, value in table.items():
                entries[key] = Response(value["text"], int(value["num_tokens"]), bool(value["finished"]))
        return entries

    def store(self, entries: dict[str, Response], queries: dict[str, str]) -> None:
        if not entries:
            return
        meta = self.folder / "meta.json"
        if not meta.exists():
            write_json_atomically(meta, {"lm": self.lm_id, "settings": asdict(self.settings)})
        name = hashlib.sha1("\n".join(sorted(entries)).encode()).hexdigest()[:16]
        table = {k: {**asdict(r), "query": queries[k]} for k, r in entries.items()}
        write_json_atomically(self.folder / f"shard-{name}.json", table)


def end_of_response_ids(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
) -> list[int]:
    """The tokenizer's EOS id plus any in the model's generation config (never a hard-coded string)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in configured if isinstance(configured, (list, tuple)) else [configured]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config defines an end-of-sequence token")
    return ids


def strip_special_strings(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Remove any special-token string (``<|im_end|>``, ...) so none reaches a teacher's input."""
    for token in sorted(set(tokenizer.all_special_tokens), key=len, reverse=True):
        if token:
            text = text.replace(token, "")
    return text.strip()


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    synced_gpus: bool = False,
) -> list[Response]:
    """Greedy completions of left-padded prompt ids; each stops at the first end-of-response token.

    ``synced_gpus``: keep stepping until every rank has finished (FSDP-sharded LM: each step is collective).
    """
    eos_ids = end_of_response_ids(tokenizer, model)
    pad = pad_token_id(tokenizer)
    batch = {k: v.to(model.device) for k, v in left_pad(prompts, pad).items()}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_ids, pad_token_id=pad
    )
    synced = {"synced_gpus": True} if synced_gpus else {}
    output = model.generate(**batch, generation_config=config, **synced)
    responses = []
    for row in output[:, batch["input_ids"].shape[1] :].tolist():
        stop = next((i for i, tok in enumerate(row) if tok in eos_ids), None)
        body = row if stop is None else row[:stop]
        text = strip_special_strings(tokenizer.decode(body, skip_special_tokens=True), tokenizer)
        responses.append(Response(text=text, num_tokens=len(body), finished=stop is not None))
    return responses


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    settings: GenerationSettings,
    lm_id: str,
    root: Path | None = None,
    show_progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Response], GenerationReport]:
    """Responses for ``queries`` (input order): cached ones are read, the rest generated in batches.

    ``lm_id`` identifies the LM weights (a resolved folder or hub name). ``on_batch(i)`` is called after
    batch ``i`` is stored (progress hooks; tests use it to simulate an interruption).

    Distributed (every rank calls this with the same queries): the ranks agree on what is missing (the
    union of their caches' gaps, so a node without a shared cache folder needs no second pass), each rank
    generates every ``world``-th length-sorted batch, and the responses are all-gathered, so every rank
    ends with all of them and stores the ones its cache folder lacks. Under FSDP every rank runs the same
    number of ``generate`` calls (a short share repeats a batch and discards it) with ``synced_gpus``.
    """
    start = time.perf_counter()
    builder = PromptBuilder(tokenizer, settings.use_chat_template, settings.max_query_tokens)
    cache = ResponseCache(lm_id, settings, root)
    prompts = [builder.ids(q, settings.instruction) for q in queries]
    keys = [cache.key(q, p) for q, p in zip(queries, prompts)]
    have = cache.load()
    first_index = {key: i for i, key in reversed(list(enumerate(keys)))}
    todo = union_over_ranks([key for key in dict.fromkeys(keys) if key not in have])
    order = sorted(todo, key=lambda k: -len(prompts[first_index[k]]))  # similar lengths share a batch
    batches = [order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)]
    mine, real = padded_share(batches, rank(), world_size()) if batches else ([], 0)
    synced = world_size() > 1 and is_sharded(model)
    was_training = model.training
    model.eval()
    generated: dict[str, Response] = {}
    for number, batch_keys in enumerate(tqdm(mine, desc="generate responses", disable=not show_progress)):
        batch_prompts = [prompts[first_index[k]] for k in batch_keys]
        outputs = greedy_generate(model, tokenizer, batch_prompts, settings.max_new_tokens, synced)
        if number < real:  # the rest is padding: keeps the number of generate calls equal across ranks
            fresh = dict(zip(batch_keys, outputs))
            cache.store(fresh, {k: queries[first_index[k]] for k in batch_keys})
            generated.update(fresh)
            if on_batch is not None:
                on_batch(number)
    model.train(was_training)
    have.update(generated)
    if world_size() > 1:
        have.update(exchange_responses(cache, generated, queries, first_index))
    missing = set(todo)
    report = GenerationReport(
        total=len(queries),
        generated=len(generated),
        cached=sum(1 for k in keys if k not in missing),
        seconds=round(time.perf_counter() - start, 3),
        cache_dir=str(cache.folder),
    )
    return [have[k] for k in keys], report


def exchange_responses(
    cache: ResponseCache, generated: dict[str, Response], queries: Sequence[str], first_index: dict[str, int]
) -> dict[str, Response]:
    """All ranks' fresh responses; those this rank's cache folder still lacks (no shared filesystem) are
    stored there too."""
    everything: dict[str, Response] = {}
    for part in all_gather_objects(generated):
        everything.update(part)
    on_disk = cache.load()
    absent = {k: r for k, r in everything.items() if k not in on_disk}
    cache.store(absent, {k: queries[first_index[k]] for k in absent})
    return everything
