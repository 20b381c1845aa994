"""Per-item metric values, their aggregation and standard errors, as lm-eval 0.4.13 computes them.

    score_*(...) -> {metric: item value}    one doc's values (a number, or a [a, b] pair for
                                            the metrics aggregated over the whole task)
    aggregate(name, items) -> float         mean | median | perplexity | weighted_perplexity |
                                            bits_per_byte | f1 | matthews_corrcoef
    stderr(name, items, iters) -> float|None  mean: the sample standard error; median, f1,
        matthews_corrcoef, perplexity: lm-eval's bootstrap (chunks of min(1000, iters)
        resamples, chunk i drawn with random.Random(i)); weighted_perplexity and
        bits_per_byte: None, as lm-eval ("N/A"); fewer than 2 items: None.
    group_metric(values, sizes, stderrs, weight_by_size)  a group's (value, stderr): the
        size-weighted mean with the pooled stderr (or the plain mean and its stderr).

The bootstrap draws the same resamples as lm-eval, vectorized: Python's Mersenne Twister state
after Random(i) is loaded into numpy's, whose random_sample() yields the same doubles, and
`floor(u * n)` are the indices `Random.choices` takes.
"""
from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np

BOOTSTRAPPED = ("median", "f1", "matthews_corrcoef", "perplexity")


class MetricError(ValueError):
    """Items a metric cannot aggregate; the message is one line."""


# --------------------------------------------------------------------------- item values


def exact_match(predictions: Sequence[str], references: Sequence[str],
                regexes_to_ignore: Optional[list] = None, ignore_case: bool = False,
                ignore_punctuation: bool = False, ignore_numbers: bool = False) -> float:
    """The share of equal pairs after lm-eval's (HF evaluate's) normalization options."""
    preds, refs = [str(p) for p in predictions], [str(r) for r in references]
    for pattern in regexes_to_ignore or []:
        preds = [re.sub(pattern, "", p) for p in preds]
        refs = [re.sub(pattern, "", r) for r in refs]
    if ignore_case:
        preds, refs = [p.lower() for p in preds], [r.lower() for r in refs]
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        preds, refs = [p.translate(table) for p in preds], [r.translate(table) for r in refs]
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        preds, refs = [p.translate(table) for p in preds], [r.translate(table) for r in refs]
    # numpy's fixed-width strings (lm-eval compares np.array(...) == ...) drop trailing NULs
    same = [p.rstrip("\x00") == r.rstrip("\x00") for p, r in zip(preds, refs)]
    return float(sum(same)) / len(same)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's answer normalization: lower case, no punctuation, no articles, single
    spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, reference: str) -> float:
    pred, gold = squad_normalize(prediction).split(), squad_normalize(reference).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def score_generation(result: Any, gold: Any, multiple_target: bool, metrics: list) -> dict:
    """{metric: value} of one generate_until doc (gold already mapped through choices)."""
    out = {}
    for m in metrics:
        if m.name == "exact_match":
            if multiple_target:
                golds = gold if isinstance(gold, list) else [gold]
                value = exact_match([result] * len(golds), golds, **m.kwargs)
                out[m.name] = 1.0 if value > 0.0 else 0.0
            else:
                out[m.name] = exact_match([result], [gold], **m.kwargs)
        elif m.name == "f1":
            golds = gold if isinstance(gold, list) else [gold]
            out[m.name] = max(squad_f1(str(result), str(g)) for g in golds)
    return out


def score_choices(lls: list, greedy: list, choices: list, gold: Any, metrics: list) -> dict:
    """{metric: value} of one multiple_choice doc; gold an index, a choice text or a list."""
    lls_arr = np.array(lls, dtype=np.float64)
    pred = int(np.argmax(lls_arr))
    pred_norm = int(np.argmax(lls_arr / np.array([float(len(c)) for c in choices])))
    pred_bytes = int(np.argmax(lls_arr / np.array([float(len(c.encode("utf-8")))
                                                   for c in choices])))
    if isinstance(gold, list):
        golds = [g if g < len(choices) else -100 for g in gold]
        hit = lambda p: 1.0 if p in golds else 0.0  # noqa: E731
        em = int(any(greedy[g] if g != -100 else 0 for g in golds))
        pair_gold = golds
    else:
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -100
        elif isinstance(gold, int) and gold >= len(choices):
            gold = -100
        hit = lambda p: 1.0 if p == gold else 0.0  # noqa: E731
        em = int(greedy[gold]) if gold != -100 else 0
        pair_gold = gold
    values = {"acc": hit(pred), "acc_norm": hit(pred_norm), "acc_bytes": hit(pred_bytes),
              "exact_match": em, "f1": [pair_gold, pred], "mcc": [pair_gold, pred]}
    return {m.name: values[m.name] for m in metrics}


def score_loglikelihood(ll: float, is_greedy: bool, metrics: list) -> dict:
    values = {"perplexity": ll, "acc": int(is_greedy)}
    return {m.name: values[m.name] for m in metrics}


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def score_rolling(ll: float, text: str, metrics: list) -> dict:
    words, n_bytes = count_words(text), len(text.encode("utf-8"))
    values = {"word_perplexity": [ll, words], "byte_perplexity": [ll, n_bytes],
              "bits_per_byte": [ll, n_bytes]}
    return {m.name: values[m.name] for m in metrics}


# --------------------------------------------------------------------------- aggregation


def _pairs(items) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(items, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise MetricError("the metric needs (a, b) pairs per item")
    return arr[:, 0], arr[:, 1]


def _f1_rows(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Binary F1 of the label 1 (sklearn's default) per row of [R, N] label arrays."""
    tp = ((gold == 1) & (pred == 1)).sum(axis=-1)
    fp = ((gold != 1) & (pred == 1)).sum(axis=-1)
    fn = ((gold == 1) & (pred != 1)).sum(axis=-1)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _mcc_rows(gold: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Multiclass Matthews correlation (sklearn's formula) per row of [R, N] label arrays."""
    n = gold.shape[-1]
    t = (gold[..., None] == labels).sum(axis=-2).astype(np.float64)  # [R, K]
    p = (pred[..., None] == labels).sum(axis=-2).astype(np.float64)  # [R, K]
    c = (gold == pred).sum(axis=-1).astype(np.float64)  # [R]
    cov_ytyp = c * n - (t * p).sum(axis=-1)
    cov_ypyp = n * n - (p * p).sum(axis=-1)
    cov_ytyt = n * n - (t * t).sum(axis=-1)
    denom = cov_ytyt * cov_ypyp
    return np.where(denom > 0, cov_ytyp / np.sqrt(np.where(denom > 0, denom, 1.0)), 0.0)


def _check_binary(gold: np.ndarray, pred: np.ndarray) -> None:
    labels = set(np.unique(np.concatenate([gold, pred])).tolist())
    if not labels <= {0.0, 1.0}:
        raise MetricError(f"f1 needs binary labels 0/1 (choice indices of a two-choice task); "
                          f"got {sorted(labels)[:6]}")


def aggregate(name: str, items: list) -> float:
    if not items:
        raise MetricError("no items to aggregate")
    if name == "mean":
        return sum(items) / len(items)
    if name == "median":
        return sorted(items)[len(items) // 2]
    if name == "perplexity":
        return math.exp(-(sum(items) / len(items)))
    if name in ("weighted_perplexity", "bits_per_byte"):
        a, b = zip(*items)
        mean = sum(a) / sum(b)
        return math.exp(-mean) if name == "weighted_perplexity" else -mean / math.log(2)
    gold, pred = _pairs(items)
    if name == "f1":
        _check_binary(gold, pred)
        return float(_f1_rows(gold, pred))
    if name == "matthews_corrcoef":
        return float(_mcc_rows(gold, pred, np.unique(np.concatenate([gold, pred]))))
    raise MetricError(f"unknown aggregation {name!r}")


def _sample_stddev(values: Sequence[float]) -> float:
    mu = sum(values) / len(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1))


def _numpy_twin(seed: int) -> np.random.RandomState:
    state = random.Random(seed).getstate()[1]
    rs = np.random.RandomState()
    rs.set_state(("MT19937", np.array(state[:624], dtype=np.uint32), state[624]))
    return rs


def bootstrap_stderr(name: str, items: list, iters: int) -> float:
    """lm-eval's bootstrap_stderr for aggregation `name`: the same resamples, vectorized."""
    n = len(items)
    chunk = min(1000, iters)
    if name in ("f1", "matthews_corrcoef"):
        gold, pred = _pairs(items)
        if name == "f1":
            _check_binary(gold, pred)
        labels = np.unique(np.concatenate([gold, pred]))
    else:
        values = np.asarray(items, dtype=np.float64)
    res = []
    for i in range(iters // chunk):
        idx = np.floor(_numpy_twin(i).random_sample((chunk, n)) * n).astype(np.int64)  # [C, N]
        if name == "median":
            res.append(np.sort(values[idx], axis=1)[:, n // 2])
        elif name == "perplexity":
            res.append(np.exp(-values[idx].mean(axis=1)))
        elif name == "f1":
            res.append(_f1_rows(gold[idx], pred[idx]))
        else:
            res.append(_mcc_rows(gold[idx], pred[idx], labels))
    return _sample_stddev(np.concatenate(res).tolist())


def stderr(name: str, items: list, iters: int) -> Optional[float]:
    if len(items) < 2 or iters <= 0:
        return None
    if name == "mean":
        return _sample_stddev(items) / math.sqrt(len(items))
    if name in BOOTSTRAPPED:
        return bootstrap_stderr(name, items, iters)
    return None


def group_metric(values: list, sizes: list, stderrs: list,
                 weight_by_size: bool) -> tuple[float, Optional[float]]:
    """A group's value from its leaf tasks' values and the matching stderr (lm-eval's)."""
    weights = sizes if weight_by_size else [1] * len(sizes)
    value = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    if any(s is None for s in stderrs):
        return value, None
    if weight_by_size:
        pooled = sum((n - 1) * s ** 2 * n for n, s in zip(sizes, stderrs)) / \
            (sum(sizes) - len(sizes))
        return value, math.sqrt(pooled / sum(sizes))
    return value, math.sqrt(sum(s ** 2 for s in stderrs)) / len(stderrs)
