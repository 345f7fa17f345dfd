"""Which (layer → heads) of the frozen LM carry the DREAM bias.

- ``middle_third`` (default, no labels): every head of the middle third of the layers.
- ``explicit``: a given ``{layer: [heads]}`` map.
- ``intervention`` (uses labels on ≤ 32 training questions: report it as label use): rank every head by
  the drop in target NLL when the bias, on that head alone, favours the gold documents versus when it
  favours the others; keep the top N. (Ranking by raw attention mass on the gold document picks broad
  layer-0 heads and was measured not to work, so it is not offered.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel

from lightning_modules.dream.inputs import DreamInputs
from lightning_modules.dream.lm_passes import copy_cache, encode_documents_prefix, suffix_logits
from lightning_modules.losses.dream import HeadMap, document_bias, key_position_bias, per_example_nll


def middle_third_heads(num_layers: int, num_heads: int) -> HeadMap:
    """All heads of layers ``[L//3, 2L//3)`` (at least one layer)."""
    start, stop = num_layers // 3, max(2 * num_layers // 3, num_layers // 3 + 1)
    return {layer: tuple(range(num_heads)) for layer in range(start, stop)}


def parse_head_map(spec: Mapping, num_layers: int, num_heads: int) -> HeadMap:
    """Validate ``{layer: [heads]}`` (keys may be strings, as YAML/JSON give them) against the model's shape."""
    heads: HeadMap = {}
    for key, values in spec.items():
        try:
            layer = int(key)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model.heads.layers: layer key '{key}' is not an integer") from error
        if not 0 <= layer < num_layers:
            raise ValueError(
                f"model.heads.layers: layer {layer} is out of range (the frozen LM has {num_layers} layers)"
            )
        chosen = tuple(sorted({int(h) for h in values}))
        bad = [h for h in chosen if not 0 <= h < num_heads]
        if bad:
            raise ValueError(
                f"model.heads.layers[{layer}]: heads {bad} are out of range (the frozen LM has {num_heads} heads)"
            )
        if chosen:
            heads[layer] = chosen
    if not heads:
        raise ValueError("model.heads.layers selects no head")
    return heads


@dataclass(frozen=True)
class HeadEffect:
    layer: int
    head: int
    effect: float  # mean over questions of NLL(bias favours others) − NLL(bias favours gold)

    def as_dict(self) -> dict:
        return asdict(self)


def top_heads(ranking: Iterable[HeadEffect], top_n: int) -> HeadMap:
    """The ``top_n`` heads with the largest intervention effect, as a head map."""
    chosen = sorted(ranking, key=lambda h: -h.effect)[:top_n]
    heads: dict[int, list[int]] = {}
    for item in chosen:
        heads.setdefault(item.layer, []).append(item.head)
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(heads.items())}


@torch.no_grad()
def rank_heads_by_intervention(
    model: PreTrainedModel,
    inputs: DreamInputs,
    gold: torch.Tensor,
    tau_attn: float,
    layers: Iterable[int] | None = None,
) -> list[HeadEffect]:
    """Intervention effect of every head of ``layers`` (default: all) on one tokenised batch.

    Args:
        model: the frozen LM, with a DREAM attention implementation set.
        inputs: questions with their candidate documents (the gold ones among them) and targets.
        gold: ``[B, k]`` bool, which candidates are gold (the label use).
        tau_attn: the training temperature; the bias favouring a set gives it cosine 1 and the rest 0.

    Returns:
        One :class:`HeadEffect` per head, sorted by decreasing effect.
    """
    num_layers, num_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    gold = gold.to(torch.float32)
    if not ((gold.sum(1) > 0) & (gold.sum(1) < gold.shape[1])).all():
        raise ValueError("every calibration question needs at least one gold and one non-gold candidate")
    favour_gold = key_position_bias(document_bias(gold, tau_attn), inputs.document_index)
    favour_others = key_position_bias(document_bias(1.0 - gold, tau_attn), inputs.document_index)
    cache = encode_documents_prefix(model, inputs)
    ranking = []
    for layer in layers if layers is not None else range(num_layers):
        for head in range(num_heads):
            heads = {layer: (head,)}
            nll = {}
            for name, bias in (("gold", favour_gold), ("others", favour_others)):
                logits = suffix_logits(model, inputs, bias, heads, copy_cache(cache))
                nll[name] = per_example_nll(logits, inputs.labels)
            ranking.append(HeadEffect(layer, head, float((nll["others"] - nll["gold"]).mean())))
    return sorted(ranking, key=lambda h: -h.effect)
