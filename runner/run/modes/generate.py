"""mode=generate: the task's requests through the backend into predictions.jsonl, no scoring.

    prepare   runner.tasks.build_task(cfg) (a dataset task knows the mode: it records no
              scores; an lm-eval task's records keep theirs)
    execute   runner/run/loop.py; benchmark.json from the session's timings; no metrics.json
"""
from __future__ import annotations

from runner.run.loop import drive
from runner.run.plan import Outcome, Plan
from runner.validation import ConfigError


def prepare(cfg, sweep_job: bool = False) -> Plan:
    from runner.tasks import build_task, manifest_entries, sampling_label

    task = build_task(cfg, strict_sampling=not sweep_job)
    info = task.info()
    return Plan(work=task, fingerprint=task.fingerprint(),
                manifest=manifest_entries(cfg, task, info),
                id_fields={"sampling": sampling_label(cfg, info), "dataset": task.name})


def check_backend(plan: Plan, backend) -> None:
    if backend.is_embedding_model:
        raise ConfigError("the model is an embedding model; mode=generate needs a generative "
                          "model (mode=embed evaluates embedding models)")


def execute(plan: Plan, session) -> Outcome:
    task = plan.work
    records, benchmark = drive(task, task.docs(), session)
    return Outcome(metrics=None, benchmark=benchmark, summary=f"{len(records)} items generated")
