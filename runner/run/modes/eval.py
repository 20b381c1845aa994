"""mode=eval: the task's requests through the backend, each item scored as it finishes.

    prepare   runner.tasks.build_task(cfg) -> Task (its docs, fingerprint, metric names)
    execute   runner/run/loop.py drives every unfinished doc into predictions.jsonl;
              task.aggregate(every record, resumed ones too) -> metrics.json,
              the session's request timings -> benchmark.json
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
                id_fields={"sampling": sampling_mode(cfg.sampling), "dataset": task.name},
                metrics=list(info.get("metrics") or []),
                primary_metric=info.get("primary_metric"))


def check_backend(plan: Plan, backend) -> None:
    if backend.is_embedding_model:
        raise ConfigError("the model is an embedding model; mode=eval needs a generative model "
                          "(mode=embed evaluates embedding models)")


def execute(plan: Plan, session) -> Outcome:
    task = plan.work
    records, benchmark = drive(task, task.docs(), session)
    metrics = task.aggregate(records)
    scores = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in (metrics.get("scores") or {}).items())
    return Outcome(metrics=metrics, benchmark=benchmark, summary=scores)
