"""Tasks: what a run evaluates, behind runner.tasks.api's Task protocol.

    build_task(cfg) -> Task      the run's task from the composed RunConfig
      the runner's own datasets (dataset=squad_mini | hf:... | jsonl:...): DatasetTask
"""
from __future__ import annotations

from typing import Any

from runner.tasks.api import Task


def build_task(cfg: Any) -> Task:
    from runner.tasks.dataset_task import DatasetTask

    return DatasetTask(cfg)
