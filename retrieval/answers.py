"""Answer metrics of extractive/generative QA with SQuAD's normalisation (docs/evaluation.md).

``normalize_answer`` follows the official SQuAD v1.1/v2.0 script: lower-case, drop punctuation, drop the
articles *a*, *an*, *the*, collapse whitespace. ``exact_match`` compares normalised strings; ``token_f1``
is the F1 of the bags of normalised tokens (SQuAD v2.0's rule when one side is empty: 1 if both are
empty, else 0). Against several gold answers a prediction gets the best score over them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """``"The  Kansas-Song!"`` → ``"kansassong"``: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised token bags: ``2 P R / (P + R)`` with ``P = common / |pred|``, ``R = common / |gold|``.

    Example: prediction ``"the Kansas song"``, gold ``"Kansas Song of KU"`` → tokens ``[kansas, song]`` vs
    ``[kansas, song, of, ku]``: P = 1, R = 0.5, F1 = 2/3.
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_match(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """``(exact match, F1)`` of ``prediction`` against the best gold answer for each metric (SQuAD's max)."""
    if not golds:
        raise ValueError("best_match needs at least one gold answer")
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)
