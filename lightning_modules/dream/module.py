"""``DreamModule``: train the embedder through selected attention heads of a frozen LM (DREAM).

Per query: cosines ``c_j = cos(E(q), E(d_j))`` over its candidates → bias ``b_j = log(k·softmax_j(c_j/τ_attn))``
on document ``j``'s key block in the selected heads → one frozen-LM pass over ``[d_1 … d_k ; prompt(q) ; y]``
→ mean NLL of the target tokens ``y``. Only the embedder receives gradients (through the bias). See
docs/dream.md; every [ours] choice is an argument below.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from datamodules.mining import bm25_top_k
from datamodules.retrieval import TrainExample
from lightning_modules.base import RetrieverModule
from lightning_modules.dream.attention import attention_name
from lightning_modules.dream.bias import document_bias, key_position_bias
from lightning_modules.dream.heads import (
    HeadEffect,
    HeadMap,
    middle_third_heads,
    parse_head_map,
    rank_heads_by_intervention,
    top_heads,
)
from lightning_modules.dream.inputs import DreamInputs, build_dream_inputs
from lightning_modules.dream.lm_loss import (
    copy_cache,
    dream_lm_loss,
    encode_documents_prefix,
    mean_target_nll,
    suffix_logits,
)

CANDIDATE_MODES = ("dataset", "in_batch", "mined")
TARGETS = ("answer", "query", "auto")
HEAD_SELECTIONS = ("middle_third", "explicit", "intervention")
DEFAULT_HEADS = {
    "selection": "middle_third",
    "layers": None,
    "top_n": 16,
    "calibration_questions": 32,
    "calibration_batch_size": 8,
    "calibration_layers": None,
}
RANKING_FILE = "dream_head_ranking.json"


def calibration_row(example: TrainExample, group: int) -> tuple[TrainExample, list[str], list[bool]] | None:
    """``group`` candidates of one training question for head calibration: its gold paragraphs (at most
    half of the group) and non-gold ones, in a fixed shuffled order; None when it has too few of either."""
    gold_docs = list(example.positives)[: max(1, group // 2)]
    others = list(example.negatives)[: group - len(gold_docs)]
    if not gold_docs or not others or len(gold_docs) + len(others) != group:
        return None
    docs = [(doc, True) for doc in gold_docs] + [(doc, False) for doc in others]
    random.Random(f"calibration-{example.query_id}").shuffle(docs)
    return example, [doc.as_text() for doc, _ in docs], [is_gold for _, is_gold in docs]


class DreamModule(RetrieverModule):
    """DREAM (Tang & Yang, 2026) as read in docs/dream.md.

    Args:
        tau_attn: temperature of the bias softmax (applied once, to the raw cosines). [ours] default 0.1.
        heads: ``selection`` (``middle_third`` [default, no labels] | ``explicit`` | ``intervention``),
            ``layers`` (``{layer: [heads]}`` for ``explicit``), ``top_n`` and ``calibration_questions``
            (≤ 32; the intervention ranking uses gold labels: label use), ``calibration_batch_size``,
            ``calibration_layers`` (restrict the ranking to these layers; null: all).
        candidates: ``dataset`` (each query's batch group: HotpotQA's own paragraphs, gold included),
            ``in_batch`` (every document of the batch is a candidate of every query), or ``mined`` (top
            ``mined_k`` of the corpus, label-free, ``mine_with`` the current embedder [re-mined every
            ``mine_every_n_steps``] or ``bm25`` [once]).
        target: ``answer``, ``query`` (query likelihood), or ``auto`` (the answer when the data has one).
        answer_prompt: prompt between documents and an answer target; must contain ``{query}``.
        query_prompt: prompt before a query target; must not contain ``{query}`` (it would leak the target).
        target_prefix: text put before the target (a space, so the target tokenises as mid-sentence words).
        document_separator / max_document_tokens / max_target_tokens / append_eos_to_target: input layout.
        reuse_document_cache: run the document prefix under ``no_grad`` once and reuse its keys/values (exact).
        document_attention: ``causal`` or ``block_diagonal`` (each document sees only itself). [ours] option.
        attention_backend: ``sdpa`` or ``flash`` (unselected layers use flash-attn; needs a GPU).
        shuffle_candidates: shuffle each query's candidate order (deterministic per query and epoch), so
            the gold paragraph is not always first.
        log_unbiased_nll: also log the target NLL with no bias (``train/nll_gain`` = unbiased − biased).
    """

    def __init__(
        self,
        tau_attn: float = 0.1,
        heads: dict[str, Any] | None = None,
        candidates: str = "dataset",
        mined_k: int = 5,
        mine_every_n_steps: int = 50,
        mine_with: str = "embedder",
        target: str = "auto",
        answer_prompt: str = "Question: {query}\nAnswer:",
        query_prompt: str = "A question that these passages answer:",
        target_prefix: str = " ",
        document_separator: str = "\n\n",
        max_document_tokens: int = 64,
        max_target_tokens: int = 32,
        append_eos_to_target: bool = False,
        reuse_document_cache: bool = True,
        document_attention: str = "causal",
        attention_backend: str = "sdpa",
        shuffle_candidates: bool = True,
        log_unbiased_nll: bool = False,
        frozen_lm: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if frozen_lm is None:
            raise ValueError("DREAM needs model.frozen_lm (the frozen causal LM whose attention is biased)")
        if candidates not in CANDIDATE_MODES:
            raise ValueError(
                f"model.candidates must be one of {', '.join(CANDIDATE_MODES)}; got '{candidates}'"
            )
        if mine_with not in ("embedder", "bm25"):
            raise ValueError(f"model.mine_with must be 'embedder' or 'bm25'; got '{mine_with}'")
        if target not in TARGETS:
            raise ValueError(f"model.target must be one of {', '.join(TARGETS)}; got '{target}'")
        if document_attention not in ("causal", "block_diagonal"):
            raise ValueError(
                f"model.document_attention must be 'causal' or 'block_diagonal'; got '{document_attention}'"
            )
        if "{query}" not in answer_prompt:
            raise ValueError(f"model.answer_prompt must contain '{{query}}'; got {answer_prompt!r}")
        if "{query}" in query_prompt:
            raise ValueError(
                "model.query_prompt must not contain '{query}': the query is the target it predicts"
            )
        if document_attention == "block_diagonal" and attention_backend == "flash":
            raise ValueError("document_attention=block_diagonal needs a 4D mask: use attention_backend=sdpa")
        heads = {**DEFAULT_HEADS, **(heads or {})}
        if heads["selection"] not in HEAD_SELECTIONS:
            raise ValueError(
                f"model.heads.selection must be one of {', '.join(HEAD_SELECTIONS)}; got '{heads['selection']}'"
            )
        if not 1 <= int(heads["calibration_questions"]) <= 32:
            raise ValueError(
                "model.heads.calibration_questions must be between 1 and 32 (METHODS.md: ≤ 32 questions)"
            )
        frozen_lm = {**frozen_lm, "attn_implementation": attention_name(attention_backend)}
        super().__init__(frozen_lm=frozen_lm, **kwargs)
        self.save_hyperparameters()
        if self.embedder is None:
            raise ValueError("DREAM needs model.embedder (the retriever it trains)")
        self.tau_attn = tau_attn
        self.head_config = heads
        self.candidate_mode, self.mined_k, self.mine_every_n_steps = candidates, mined_k, mine_every_n_steps
        self.mine_with = mine_with
        self.target, self.answer_prompt, self.query_prompt = target, answer_prompt, query_prompt
        self.target_prefix, self.document_separator = target_prefix, document_separator
        self.max_document_tokens, self.max_target_tokens = max_document_tokens, max_target_tokens
        self.append_eos_to_target = append_eos_to_target
        self.reuse_document_cache = reuse_document_cache
        self.block_diagonal = document_attention == "block_diagonal"
        self.shuffle_candidates = shuffle_candidates
        self.log_unbiased_nll = log_unbiased_nll
        config = self.frozen_lm.config
        self.num_layers, self.num_heads = config.num_hidden_layers, config.num_attention_heads
        self.selected_heads: HeadMap | None = None
        self.head_ranking: list[dict] | None = None
        if heads["selection"] == "middle_third":
            self.selected_heads = middle_third_heads(self.num_layers, self.num_heads)
        elif heads["selection"] == "explicit":
            if not heads["layers"]:
                raise ValueError("model.heads.selection=explicit needs model.heads.layers: {layer: [heads]}")
            self.selected_heads = parse_head_map(heads["layers"], self.num_layers, self.num_heads)
        self._mined: dict[str, list[str]] = {}
        self._mined_at_step: int | None = None

    # ---- head selection ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.selected_heads is None:
            self.selected_heads = self.select_heads_by_intervention()
        rank_zero_info(f"DREAM heads ({self.head_config['selection']}): {self.describe_heads()}")

    def describe_heads(self) -> str:
        heads = self.selected_heads or {}
        return f"{sum(len(h) for h in heads.values())} heads in layers {sorted(heads)}"

    def select_heads_by_intervention(self) -> HeadMap:
        """Rank heads on ≤ 32 training questions (uses gold labels), keep the top N, save the ranking."""
        config = self.head_config
        datamodule = self.trainer.datamodule
        group = int(getattr(datamodule, "group_size", 5))
        rows = [row for row in (calibration_row(ex, group) for ex in datamodule.train_examples) if row]
        rows = rows[: int(config["calibration_questions"])]
        if not rows:
            raise ValueError(
                f"heads.selection=intervention needs training questions with a gold and {group - 1} other "
                f"candidates (data.group_size={group})"
            )
        totals: dict[tuple[int, int], float] = {}
        size = int(config["calibration_batch_size"])
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            inputs = self.build_inputs(
                [r[1] for r in chunk], [r[0].query for r in chunk], [list(r[0].answers) for r in chunk]
            )
            gold = torch.tensor([r[2] for r in chunk], device=self.device)
            ranking = rank_heads_by_intervention(
                self.frozen_lm.model,
                inputs.to(self.device),
                gold,
                self.tau_attn,
                config["calibration_layers"],
            )
            for item in ranking:
                key = (item.layer, item.head)
                totals[key] = totals.get(key, 0.0) + item.effect * len(chunk)
        ranking = sorted(
            (HeadEffect(layer, head, v / len(rows)) for (layer, head), v in totals.items()),
            key=lambda e: -e.effect,
        )
        heads = top_heads(ranking, int(config["top_n"]))
        self.head_ranking = [item.as_dict() for item in ranking]
        self.save_ranking(heads, len(rows))
        return heads

    def save_ranking(self, heads: HeadMap, questions: int) -> None:
        if not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / RANKING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "selection": "intervention",
            "label_use": f"gold labels of {questions} training questions",
            "tau_attn": self.tau_attn,
            "selected": {str(k): list(v) for k, v in heads.items()},
            "ranking": self.head_ranking,
        }
        path.write_text(json.dumps(payload, indent=1) + "\n")
        rank_zero_info(f"DREAM head ranking saved to {path}")

    # ---- batches → LM inputs ----------------------------------------------------------------------------
    def target_and_prompt(self, query: str, answers: list[str]) -> tuple[str, str]:
        use_answer = self.target == "answer" or (self.target == "auto" and answers)
        if use_answer:
            if not answers or not answers[0].strip():
                raise ValueError(
                    f"model.target=answer but the query {query!r} has no answer (use target=auto or query)"
                )
            return self.answer_prompt.format(query=query), self.target_prefix + answers[0]
        return self.query_prompt, self.target_prefix + query

    def build_inputs(
        self, documents: list[list[str]], queries: list[str], answers: list[list[str]]
    ) -> DreamInputs:
        prompts, targets = zip(*(self.target_and_prompt(q, a) for q, a in zip(queries, answers)))
        return build_dream_inputs(
            self.frozen_lm.tokenizer,
            documents,
            list(prompts),
            list(targets),
            self.max_document_tokens,
            self.max_target_tokens,
            self.document_separator,
            self.append_eos_to_target,
        )

    def candidate_texts(self, batch: dict[str, Any]) -> tuple[list[list[str]], torch.Tensor | None]:
        """Each query's candidate texts (``[B][k]``) and, when known, which are gold (for logging only)."""
        queries, documents = batch["queries"], batch["documents"]
        if self.candidate_mode == "in_batch":
            return [list(documents) for _ in queries], None
        if self.candidate_mode == "mined":
            self.refresh_mined_candidates()
            return [self._mined[qid] for qid in batch["query_ids"]], None
        group = len(documents) // len(queries)
        rows = [list(documents[i * group : (i + 1) * group]) for i in range(len(queries))]
        labels = batch.get("labels")
        gold = labels.clone() if labels is not None else None
        if self.shuffle_candidates:
            for i, qid in enumerate(batch["query_ids"]):
                order = list(range(group))
                random.Random(f"{qid}-{self.current_epoch}").shuffle(order)
                rows[i] = [rows[i][j] for j in order]
                if gold is not None:
                    gold[i] = labels[i, order]
        return rows, gold

    @torch.no_grad()
    def refresh_mined_candidates(self) -> None:
        """Top ``mined_k`` corpus documents of every training query, label-free: under the current embedder
        (re-mined every ``mine_every_n_steps``) or by BM25 (mined once)."""
        step = self.global_step
        if self._mined and (
            self.mine_with == "bm25" or step - (self._mined_at_step or 0) < self.mine_every_n_steps
        ):
            return
        datamodule = self.trainer.datamodule
        documents = list(datamodule.load_corpus().corpus.values())
        texts = [doc.as_text() for doc in documents]
        examples = datamodule.train_examples
        k = min(self.mined_k, len(texts))
        if self.mine_with == "bm25":
            top = bm25_top_k([ex.query for ex in examples], documents, k)
        else:
            queries = self.encode_queries([ex.query for ex in examples])
            top = (queries @ self.encode_documents(texts).T).topk(k, dim=1).indices.tolist()
        self._mined = {ex.query_id: [texts[int(i)] for i in row] for ex, row in zip(examples, top)}
        self._mined_at_step = step

    # ---- training ---------------------------------------------------------------------------------------
    def candidate_cosines(self, queries: list[str], candidates: list[list[str]]) -> torch.Tensor:
        """Raw cosines ``[B, k]`` between each query and its candidates (each distinct text embedded once)."""
        unique = list(dict.fromkeys(text for row in candidates for text in row))
        position = {text: i for i, text in enumerate(unique)}
        query_embeddings = self.embedder.embed(queries, "query")
        document_embeddings = self.embedder.embed(unique, "document")
        index = torch.tensor(
            [[position[t] for t in row] for row in candidates], device=query_embeddings.device
        )
        return F.cosine_similarity(query_embeddings[:, None, :], document_embeddings[index], dim=-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        candidates, gold = self.candidate_texts(batch)
        cosines = self.candidate_cosines(batch["queries"], candidates)
        bias = document_bias(cosines, self.tau_attn)
        inputs = self.build_inputs(candidates, batch["queries"], batch["answers"]).to(self.device)
        key_bias = key_position_bias(bias, inputs.document_index)
        model = self.frozen_lm.model
        if self.log_unbiased_nll:
            cache = (
                encode_documents_prefix(model, inputs, self.block_diagonal)
                if self.reuse_document_cache
                else None
            )
            with torch.no_grad():
                unbiased = mean_target_nll(
                    suffix_logits(
                        model,
                        inputs,
                        torch.zeros_like(key_bias),
                        self.selected_heads,
                        copy_cache(cache) if cache is not None else None,
                        self.block_diagonal,
                    ),
                    inputs.labels,
                )
            logits = suffix_logits(model, inputs, key_bias, self.selected_heads, cache, self.block_diagonal)
            loss = mean_target_nll(logits, inputs.labels)
            self.log("train/nll_gain", unbiased - loss.detach(), batch_size=len(candidates))
        else:
            loss = dream_lm_loss(
                model, inputs, key_bias, self.selected_heads, self.reuse_document_cache, self.block_diagonal
            )
        size = len(candidates)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/bias_std", bias.detach().std(dim=1).mean(), batch_size=size)
        if gold is not None:
            weights = torch.softmax(cosines.detach() / self.tau_attn, dim=1)
            self.log("train/gold_weight", (weights * gold.to(weights)).sum(1).mean(), batch_size=size)
        return self.checked_loss(loss, batch_idx)

    # ---- checkpoints keep the chosen heads (the intervention ranking is not recomputed on resume) ------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.selected_heads is not None:
            checkpoint["dream_heads"] = {str(k): list(v) for k, v in self.selected_heads.items()}
        if self.head_ranking is not None:
            checkpoint["dream_head_ranking"] = self.head_ranking

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "dream_heads" in checkpoint:
            self.selected_heads = parse_head_map(checkpoint["dream_heads"], self.num_layers, self.num_heads)
        self.head_ranking = checkpoint.get("dream_head_ranking", self.head_ranking)
