"""Tasks: what a run evaluates, behind runner.tasks.api's Task protocol.

    build_task(cfg, strict_sampling) -> Task     the run's task from the composed RunConfig
      cfg.task set (task=gsm8k | task=lmeval:FILE): the lm-eval task layer
          (runner/tasks/lm_eval_task.py: an LmEvalTask, or a TaskGroup over its leaves);
          strict_sampling=False (a sweep's job) records sampling values the task cannot use
          instead of refusing them
      otherwise the runner's own datasets (dataset=squad_mini | hf:... | jsonl:...):
          DatasetTask
    manifest_entries(cfg, task, info) -> dict     what manifest.json says about the work
    sampling_label(cfg, info) -> str              the run id's / manifest's sampling field
"""
from __future__ import annotations

from typing import Any

from runner.tasks.api import Task


def build_task(cfg: Any, *, strict_sampling: bool = True) -> Task:
    if getattr(cfg, "task", None) is not None:
        from runner.tasks.lm_eval_task import build

        return build(cfg, strict_sampling=strict_sampling)
    from runner.tasks.dataset_task import DatasetTask

    return DatasetTask(cfg)


def manifest_entries(cfg: Any, task: Task, info: dict) -> dict:
    """A dataset run keeps its `dataset` entry (source, rows, fingerprint); a task run's
    `task` entry is the task's whole info() (splits, few-shot, generation, fingerprint)."""
    if getattr(cfg, "task", None) is None:
        return {"dataset": info, "task": {"name": task.name, "output_type": task.output_type}}
    return {"task": {"name": task.name, "output_type": task.output_type,
                     "fingerprint": task.fingerprint(), "info": info}}


def sampling_label(cfg: Any, info: dict) -> str:
    """greedy | random | beam as the run samples: a dataset run's from its sampling group; a
    task run's from the effective settings of its generate_until tasks (a task that only
    scores prompt logprobs is greedy; generating tasks that differ are "mixed")."""
    from runner.validation import sampling_mode

    if getattr(cfg, "task", None) is None:
        return sampling_mode(cfg.sampling)
    leaves = list((info.get("tasks") or {}).values()) or [info]
    modes = {sampling_mode(leaf["generation"]) for leaf in leaves if leaf.get("generation")}
    if not modes:
        return "greedy"
    return modes.pop() if len(modes) == 1 else "mixed"
