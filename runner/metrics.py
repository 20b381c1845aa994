"""Task metrics: per-item scores for one prediction and their aggregation over a run.

Data flow: the runner reads each finished prediction and the example's references, calls
`score(metric, prediction, references)` to get a dict of per-item numbers (kept next to the
prediction), then `aggregate(metric, item_scores)` to get the means written to metrics.json.

Metrics, all on a 0-100 scale so that numbers read like the official SQuAD script's output:

- "squad": SQuAD v1.1 exact match and token F1. Both texts go through the v1.1 answer
  normalization (lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse
  whitespace); each score is the maximum over the references. Keys: exact_match, f1.
- "exact_match": the prediction equals a reference after stripping surrounding whitespace,
  nothing else. Key: exact_match.

`METRICS` is the registry (name -> Metric); an unknown name raises ValueError listing the
known ones, so a typo in a config fails before any generation runs (`get_metric`).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable

# The v1.1 normalization removes exactly the ASCII punctuation set; Unicode punctuation such as
# curly quotes is kept, because widening the set would move scores away from the official ones.
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalization: lowercase, no punctuation, no articles, single spaces."""
    # Order matters: punctuation goes before articles so that "the-end" -> "theend" stays one
    # token, and articles are removed as whole words only ("theory" keeps its "the").
    text = text.lower().translate(_PUNCT_TABLE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, reference: str) -> float:
    """1.0 when both normalize to the same string, else 0.0 (one reference, 0-1 scale)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def squad_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between the normalized texts (one reference, 0-1 scale).

    Tokens are counted as a multiset: a token repeated in both texts counts as often as it
    appears in the shorter side. As in the v1.1 script, no common token means 0.0, also when
    both sides normalize to nothing.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _score_squad(prediction: str, references: list[str]) -> dict[str, float]:
    return {
        "exact_match": 100.0 * max(squad_exact_match(prediction, r) for r in references),
        "f1": 100.0 * max(squad_f1(prediction, r) for r in references),
    }


def _score_exact_match(prediction: str, references: list[str]) -> dict[str, float]:
    stripped = prediction.strip()
    return {"exact_match": 100.0 * max(float(stripped == r.strip()) for r in references)}


@dataclass(frozen=True)
class Metric:
    """One registered metric: its per-item scorer and the keys that scorer returns."""

    name: str
    keys: tuple[str, ...]
    score_fn: Callable[[str, list[str]], dict[str, float]]
    description: str


METRICS: dict[str, Metric] = {
    "squad": Metric(
        "squad", ("exact_match", "f1"), _score_squad,
        "SQuAD v1.1 exact match and token F1 (official normalization), max over references, 0-100",
    ),
    "exact_match": Metric(
        "exact_match", ("exact_match",), _score_exact_match,
        "prediction equals a reference after stripping whitespace, 0-100",
    ),
}


def get_metric(metric: str) -> Metric:
    """The registered Metric called `metric`; ValueError listing the known names otherwise."""
    try:
        return METRICS[metric]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown metric {metric!r}; known metrics: {', '.join(sorted(METRICS))}"
        ) from None


def score(metric: str, prediction: str, references: list[str]) -> dict[str, float]:
    """Per-item scores of one prediction against its references (0-100 each)."""
    m = get_metric(metric)
    if isinstance(references, str):
        # A bare string would be scored character by character; almost surely a caller bug.
        raise TypeError("references must be a list of strings, not a single string")
    if not references:
        raise ValueError(f"metric {metric!r} needs at least one reference, got none")
    if prediction is None:
        prediction = ""
    return m.score_fn(prediction, list(references))


def aggregate(metric: str, item_scores: list[dict]) -> dict[str, float]:
    """Means of each key of `metric` over the items, plus `num_items`.

    With no items every mean is 0.0 and num_items is 0, so metrics.json always has the same
    keys; an item that lacks one of the metric's keys is a caller bug and raises ValueError.
    """
    m = get_metric(metric)
    out: dict[str, float] = {}
    for key in m.keys:
        total = 0.0
        for i, item in enumerate(item_scores):
            if key not in item:
                raise ValueError(
                    f"item {i} of metric {metric!r} has no {key!r} score (has {sorted(item)})"
                )
            total += float(item[key])
        out[key] = total / len(item_scores) if item_scores else 0.0
    out["num_items"] = len(item_scores)
    return out
