"""mode=embed: the similarity task with an embedding model, through the run's backend.

    python -m runner mode=embed model=local model.model=PATH/all-MiniLM-L6-v2 \
        dataset=builtin:sts_mini
    python -m runner mode=embed model=local model.model=PATH dataset=jsonl:pairs.jsonl

    prepare   runner.embedding_task.load_pairs: {"id", "sentence1", "sentence2", "score"} rows
              (the first `limit`); their fingerprint enters the config hash
    execute   the pairs not yet in predictions.jsonl -> backend.encode(every distinct sentence
              once) -> one line per pair with its cosine, journaled; Spearman and Pearson (x100)
              over every pair of the run (resumed ones too) -> metrics.json
"""
from __future__ import annotations

import logging

from runner.datasets import fingerprint_rows
from runner.embedding_task import cosine, load_pairs, pearson, spearman
from runner.run.plan import Outcome, Plan
from runner.validation import ConfigError

log = logging.getLogger("runner")


def prepare(cfg, sweep_job: bool = False) -> Plan:
    """The pairs' plan; `sweep_job` changes nothing here (embed runs no task)."""
    items = load_pairs(cfg.dataset.source, cfg.limit)
    return Plan(work=items, fingerprint=fingerprint_rows(items),
                manifest={"dataset": {"source": cfg.dataset.source, "num_pairs": len(items)}},
                id_fields={"sampling": "embed", "dataset": cfg.dataset.name},
                metrics=["spearman", "pearson", "num_pairs"], primary_metric="spearman")


def check_backend(plan: Plan, backend) -> None:
    if backend.kind in ("local", "ray") and not backend.is_embedding_model:
        raise ConfigError("the model is generative; mode=embed needs an embedding model (e.g. a "
                          "BERT sentence-transformers folder)")


def execute(plan: Plan, session) -> Outcome:
    items = plan.work
    with session.folder.predictions() as preds:
        todo = [it for it in items if str(it["id"]) not in preds.done_ids]
        session.session.update(resumed_items=len(items) - len(todo), todo_items=len(todo))
        session.save_manifest()
        if todo:
            sentences = list(dict.fromkeys(s for it in todo
                                           for s in (it["sentence1"], it["sentence2"])))
            log.info("embedding %d sentences of %d pairs", len(sentences), len(todo))
            emb = dict(zip(sentences, session.backend.encode(sentences)))
            for it in todo:
                preds.append({"id": str(it["id"]), "sentence1": it["sentence1"],
                              "sentence2": it["sentence2"], "gold": it["score"],
                              "cosine": cosine(emb[it["sentence1"]], emb[it["sentence2"]])})
        by_id = {r["id"]: r for r in preds.records}
        records = [by_id[str(it["id"])] for it in items]
    cosines = [r["cosine"] for r in records]
    gold = [float(r["gold"]) for r in records]
    scores = {"spearman": 100 * spearman(cosines, gold), "pearson": 100 * pearson(cosines, gold),
              "num_pairs": len(records)}
    metrics = {"metric": "similarity_correlation", "scores": scores, "num_items": len(records)}
    summary = f"spearman={scores['spearman']:.2f}, pearson={scores['pearson']:.2f}"
    return Outcome(metrics=metrics, summary=summary)
