"""mode=generate: the task's requests through the backend into predictions.jsonl, no scoring.

    prepare   runner.tasks.build_task(cfg) (the task knows the mode: it records no scores)
    execute   runner/run/loop.py; benchmark.json from the session's timings; no metrics.json
"""
from __future__ import annotations

from runner.run.loop import drive
from runner.run.plan import Outcome, Plan
from runner.validation import ConfigError, sampling_mode


def prepare(cfg) -> Plan:
    from runner.tasks import build_task

    task = build_task(cfg)
    info = task.info()
    return Plan(work=task, fingerprint=task.fingerprint(),
                manifest={"dataset": info, "task": {"name": task.name,
                                                    "output_type": task.output_type}},
                id_fields={"sampling": sampling_mode(cfg.sampling), "dataset": task.name})


def check_backend(plan: Plan, backend) -> None:
    if backend.is_embedding_model:
        raise ConfigError("the model is an embedding model; mode=generate needs a generative "
                          "model (mode=embed evaluates embedding models)")


def execute(plan: Plan, session) -> Outcome:
    task = plan.work
    records, benchmark = drive(task, task.docs(), session)
    return Outcome(metrics=None, benchmark=benchmark, summary=f"{len(records)} items generated")
