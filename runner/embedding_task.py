"""Embedding task: semantic similarity correlation (STS-style) with an embedding model.

    load_pairs("builtin:NAME" | "jsonl:PATH", limit) -> items
    items [{"id", "sentence1", "sentence2", "score" (gold, 0-5)}]
      -> LLM.embed(every distinct sentence, once) -> cosine similarity per pair
      -> Spearman (and Pearson) correlation between the cosines and the gold scores -> metrics

The builtin set is runner/data/sts_mini.jsonl (`builtin:sts_mini`): 30 sentence pairs written
for this project (Apache-2.0), each with a 0-5 similarity score assigned by hand in the style of
STS-B (5 = same meaning, 0 = unrelated). It checks that the embedding path works end to end;
it is far too small to rank models. Correlations are reported on a -100..100 scale, as MTEB does.
"""
from __future__ import annotations

import json
import math
from importlib import resources
from typing import Optional, Sequence

REQUIRED_FIELDS = ("sentence1", "sentence2", "score")


def load_pairs(source: str, limit: Optional[int] = None) -> list[dict]:
    """builtin:NAME or jsonl:PATH rows with sentence1/sentence2/score; errors name the line."""
    from runner.datasets import DatasetError, builtin_path, parse_source, read_jsonl_rows

    spec = parse_source(source)
    if spec["scheme"] == "builtin":
        path = str(builtin_path(spec["name"]))
    elif spec["scheme"] == "jsonl":
        path = spec["path"]
    else:
        raise DatasetError(f"dataset.source={source!r}: mode=embed reads builtin: or jsonl: "
                           "pairs ({'id', 'sentence1', 'sentence2', 'score'} per line)")
    rows, first_line = [], {}
    for lineno, row in read_jsonl_rows(path):
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise DatasetError(f"{path}:{lineno}: missing field(s) {missing}; the row has "
                               f"{sorted(row)}")
        for name in ("sentence1", "sentence2"):
            if not isinstance(row[name], str):
                raise DatasetError(f"{path}:{lineno}: {name} must be a string, got "
                                   f"{type(row[name]).__name__}")
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or \
                not math.isfinite(score):
            raise DatasetError(f"{path}:{lineno}: score must be a number (the gold "
                               f"similarity), got {score!r:.40}")
        row.setdefault("id", f"pair-{lineno}")
        # predictions are keyed by id (resume skips the finished ones), so ids must differ
        if str(row["id"]) in first_line:
            raise DatasetError(f"{path}:{lineno}: duplicate id {str(row['id'])!r:.60} (first "
                               f"at line {first_line[str(row['id'])]}); give every pair its "
                               "own id")
        first_line[str(row["id"])] = lineno
        rows.append(row)
    rows = rows[:limit] if limit else rows
    if len(rows) < 3:
        raise DatasetError(f"{path}: {len(rows)} pairs; a correlation needs at least 3")
    return rows


def load_sts_mini() -> list[dict]:
    """The builtin similarity set, one dict per pair."""
    path = resources.files("runner") / "data" / "sts_mini.jsonl"
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def rankdata(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1          # positions i..j hold ranks i+1..j+1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"correlation needs two sequences of equal length >= 2, got "
                         f"{len(x)} and {len(y)}.")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    if vx == 0 or vy == 0:
        return float("nan")            # a constant sequence has no defined correlation
    return cov / math.sqrt(vx * vy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
    return pearson(rankdata(x), rankdata(y))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(p * q for p, q in zip(a, b))
    na = math.sqrt(sum(p * p for p in a))
    nb = math.sqrt(sum(q * q for q in b))
    return dot / (na * nb) if na and nb else 0.0


def score_pairs(llm, items: Sequence[dict], pooling_params=None,
                use_tqdm: bool = False) -> list[float]:
    """Cosine similarity of each pair's embeddings; each distinct sentence is embedded once."""
    for i, item in enumerate(items):
        missing = [f for f in REQUIRED_FIELDS if f not in item]
        if missing:
            raise ValueError(f"similarity item {i} ({item.get('id', '?')}) lacks fields "
                             f"{missing}; each needs {list(REQUIRED_FIELDS)}.")
    sentences = list(dict.fromkeys(s for it in items for s in (it["sentence1"],
                                                              it["sentence2"])))
    outs = llm.embed(sentences, pooling_params=pooling_params, use_tqdm=use_tqdm)
    emb = {s: o.outputs.embedding for s, o in zip(sentences, outs)}
    return [cosine(emb[it["sentence1"]], emb[it["sentence2"]]) for it in items]


def run_embedding_task(llm, items: Optional[Sequence[dict]] = None, pooling_params=None,
                       use_tqdm: bool = False) -> dict:
    """Spearman/Pearson (x100) between cosine similarity and gold scores; items default to the
    builtin sts_mini set. Returns {"spearman", "pearson", "num_pairs", "cosine_scores"}."""
    items = load_sts_mini() if items is None else list(items)
    if len(items) < 2:
        raise ValueError(f"the similarity task needs at least 2 pairs, got {len(items)}.")
    cosines = score_pairs(llm, items, pooling_params, use_tqdm)
    gold = [float(it["score"]) for it in items]
    return {"spearman": 100 * spearman(cosines, gold), "pearson": 100 * pearson(cosines, gold),
            "num_pairs": len(items), "cosine_scores": cosines}
