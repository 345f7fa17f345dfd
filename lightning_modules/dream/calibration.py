"""``heads.selection=intervention``: rank the frozen LM's heads on ≤ 32 labelled training questions and keep
the top N (label use: the ranking file says so)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import PreTrainedModel

from datamodules.records import TrainExample
from lightning_modules.dream.batch import DreamBatchPreparer
from lightning_modules.dream.heads import HeadEffect, rank_heads_by_intervention
from lightning_modules.losses.dream import HeadMap

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


def rank_heads_on_examples(
    model: PreTrainedModel,
    preparer: DreamBatchPreparer,
    examples: list[TrainExample],
    group: int,
    device: torch.device,
) -> tuple[list[HeadEffect], int]:
    """Every head's intervention effect (best first), averaged over the first ``calibration_questions``
    usable examples, and how many examples that was."""
    settings = preparer.settings
    rows = [row for row in (calibration_row(ex, group) for ex in examples) if row]
    rows = rows[: int(settings.heads.calibration_questions)]
    if not rows:
        raise ValueError(
            f"heads.selection=intervention needs training questions with a gold and {group - 1} other "
            f"candidates (data.group_size={group})"
        )
    totals: dict[tuple[int, int], float] = {}
    size = int(settings.heads.calibration_batch_size)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        inputs = preparer.lm_inputs(
            [r[1] for r in chunk], [r[0].query for r in chunk], [r[0].answers for r in chunk]
        )
        gold = torch.tensor([r[2] for r in chunk], device=device)
        ranking = rank_heads_by_intervention(
            model, inputs.to(device), gold, settings.tau_attn, settings.heads.calibration_layers
        )
        for item in ranking:
            key = (item.layer, item.head)
            totals[key] = totals.get(key, 0.0) + item.effect * len(chunk)
    ranking = sorted(
        (HeadEffect(layer, head, v / len(rows)) for (layer, head), v in totals.items()),
        key=lambda e: -e.effect,
    )
    return ranking, len(rows)


def write_ranking(
    folder: str | Path, heads: HeadMap, ranking: list[dict], questions: int, tau_attn: float
) -> Path:
    """``<run>/dream_head_ranking.json``: the chosen heads, the whole ranking and its label use."""
    path = Path(folder) / RANKING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "selection": "intervention",
        "label_use": f"gold labels of {questions} training questions",
        "tau_attn": tau_attn,
        "selected": {str(k): list(v) for k, v in heads.items()},
        "ranking": ranking,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
