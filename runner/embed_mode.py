"""mode=embed: the similarity task with an embedding model, into a versioned run folder.

    python -m runner mode=embed model=local model.model=PATH/all-MiniLM-L6-v2 \
        dataset=builtin:sts_mini
    python -m runner mode=embed model=local model.model=PATH dataset=jsonl:pairs.jsonl

Rows are {"id", "sentence1", "sentence2", "score"} (gold similarity, any scale). LLM.encode
embeds every distinct sentence once; each pair's cosine similarity and the gold scores give
Spearman and Pearson correlations (x100). The run folder <output_root>/<experiment>/<run-id>/
gets config.yaml, manifest.json, predictions.jsonl (one line per pair with its cosine),
metrics.json and run.log. The sampling group is not used.
"""
from __future__ import annotations

import datetime as dt
import json
import os

import yaml

from runner import manifest as mf
from runner.datasets import DatasetError, builtin_path, parse_source
from runner.embedding_task import REQUIRED_FIELDS, run_embedding_task
from runner.model_source import llm_kwargs, resolve_model_source
from runner.schemas import RunConfig, to_plain
from runner.store import RunStore


def load_pairs(source: str, limit=None) -> list[dict]:
    """builtin:NAME or jsonl:PATH rows with sentence1/sentence2/score; errors name the line."""
    spec = parse_source(source)
    if spec["scheme"] == "builtin":
        path = builtin_path(spec["name"])
    elif spec["scheme"] == "jsonl":
        path = spec["path"]
    else:
        raise DatasetError(f"dataset.source={source!r}: mode=embed reads builtin: or jsonl: "
                           "pairs ({'id', 'sentence1', 'sentence2', 'score'} per line)")
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            missing = [f for f in REQUIRED_FIELDS if f not in row]
            if missing:
                raise DatasetError(f"{path}:{lineno}: missing field(s) {missing}; the row has "
                                   f"{sorted(row)}")
            row.setdefault("id", f"pair-{lineno}")
            rows.append(row)
    if len(rows) < 3:
        raise DatasetError(f"{path}: {len(rows)} pairs; a correlation needs at least 3")
    return rows[:limit] if limit else rows


def run_embed(cfg: RunConfig, command: str):
    from runner.app import RunResult
    from runner.engine import LLM

    items = load_pairs(cfg.dataset.source, cfg.dataset.limit)
    source = resolve_model_source(cfg.model)
    run_id = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{cfg.model.name}_embed"
    store = RunStore(os.path.join(cfg.output_root, cfg.experiment, run_id))
    store.create()
    store.write_text("config.yaml", yaml.safe_dump(to_plain(cfg), sort_keys=False))
    manifest = {"run_id": run_id, "experiment": cfg.experiment, "mode": "embed",
                "status": "running", "created": mf.now_iso(), "command": command,
                "git": mf.git_state(), "packages": mf.package_versions(),
                "hardware": mf.hardware(), "seeds": {"seed": cfg.seed},
                "model": {"name": cfg.model.name, "source": source.model},
                "dataset": {"source": cfg.dataset.source, "num_pairs": len(items)}}
    store.write_json("manifest.json", manifest)
    try:
        llm = LLM(**llm_kwargs(cfg.model, cfg.engine, cfg.seed, source))
        if not llm.is_embedding_model:
            raise DatasetError(f"model {cfg.model.name!r} is generative; mode=embed needs an "
                               "embedding model (e.g. a BERT sentence-transformers folder)")
        metrics = run_embedding_task(llm, items, use_tqdm=cfg.use_tqdm)
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                        updated=mf.now_iso())
        store.write_json("manifest.json", manifest)
        raise
    cosines = metrics.pop("cosine_scores")
    with open(store.path("predictions.jsonl"), "w", encoding="utf-8") as fh:
        for item, cos in zip(items, cosines):
            fh.write(json.dumps({"id": item["id"], "sentence1": item["sentence1"],
                                 "sentence2": item["sentence2"], "gold": item["score"],
                                 "cosine": cos}) + "\n")
    store.write_json("metrics.json", {"metric": "similarity_correlation", "scores": metrics})
    store.write_text("run.log", f"spearman={metrics['spearman']:.2f} "
                                f"pearson={metrics['pearson']:.2f} n={metrics['num_pairs']}\n")
    manifest.update(status="completed", updated=mf.now_iso())
    store.write_json("manifest.json", manifest)
    return RunResult(run_dir=str(store.path("")).rstrip("/"), run_id=run_id, status="completed",
                     metrics={"scores": {k: metrics[k] for k in ("spearman", "pearson")}})
