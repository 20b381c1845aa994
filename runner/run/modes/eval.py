"""mode=eval: the task's requests through the backend, each item scored as it finishes.

    prepare   runner.tasks.build_task(cfg) -> Task (its docs, fingerprint, metric names); a
              sweep job's task records sampling values it cannot use instead of refusing them
    execute   runner/run/loop.py drives every unfinished doc into predictions.jsonl;
              task.aggregate(every record, resumed ones too) -> metrics.json,
              the session's request timings -> benchmark.json
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
                id_fields={"sampling": sampling_label(cfg, info), "dataset": task.name},
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
