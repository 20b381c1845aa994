"""A group of tasks (a benchmark) as one runner.tasks.api.Task, aggregated as lm-eval does.

    docs()       every leaf task's docs, in the group's order (Doc.task names the leaf)
    requests() / record()   handed to the leaf task that owns the doc
    info()       the tree, every leaf's info(), and `metrics` / `primary_metric`: the keys
                 aggregate()'s `scores` will have (score_names), known before any doc runs
    aggregate()  each leaf's own result (LmEvalTask.task_result), then every group of the tree
                 bottom-up: for each aggregate_metric_list entry and each filter it finds in
                 the leaves (or the ones it names), the mean over ALL leaf tasks below it,
                 weighted by their item counts (weight_by_size), with the pooled stderr;
                 a group without aggregate_metric_list (a tag) reports no metrics of its own.
"""
from __future__ import annotations

import hashlib
from typing import Optional

from runner.tasks import metrics
from runner.tasks.api import Doc, Request
from runner.tasks.spec import GroupSpec
from runner.tasks.task import LmEvalTask


class TaskGroup:
    def __init__(self, spec: GroupSpec, tasks: dict[str, LmEvalTask]):
        self.spec = spec
        self.name = spec.name
        self.tasks = tasks
        types = {t.output_type for t in tasks.values()}
        self.output_type = types.pop() if len(types) == 1 else "mixed"

    def docs(self) -> list[Doc]:
        return [d for t in self.tasks.values() for d in t.docs()]

    def requests(self, doc: Doc, tokenizer, max_model_len: int) -> list[Request]:
        return self.tasks[doc.task].requests(doc, tokenizer, max_model_len)

    def record(self, doc: Doc, requests: list[Request], outputs: list) -> dict:
        return self.tasks[doc.task].record(doc, requests, outputs)

    def score_names(self) -> list[str]:
        """The keys of aggregate()'s `scores`: the top group's aggregate metrics, or (a group
        without aggregate_metric_list, e.g. a tag) every leaf's as "task:metric,filter"."""
        leaf_keys = {n: t.score_names() for n, t in self.tasks.items()}
        top = next(g for g in self.spec.groups() if g.name == self.name)
        keys = [key for key, _ in group_keys(top, [leaf_keys[t.name] for t in top.leaves()
                                                   if t.name in leaf_keys])]
        return keys or [f"{n}:{k}" for n, names in leaf_keys.items() for k in names]

    def info(self) -> dict:
        names = self.score_names()
        return {"name": self.name, "output_type": self.output_type,
                "metrics": names, "primary_metric": names[0] if names else None,
                "fingerprint": self.fingerprint(),
                "groups": {g.name: {"members": [m.name for m in g.members],
                                    "aggregate_metric_list": g.aggregate,
                                    "version": g.version} for g in self.spec.groups()},
                "tasks": {n: t.info() for n, t in self.tasks.items()}}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for g in self.spec.groups():
            h.update(repr((g.name, [m.name for m in g.members], g.aggregate)).encode())
        for name, t in self.tasks.items():
            h.update(f"{name}:{t.fingerprint()}".encode())
        return h.hexdigest()[:16]

    def aggregate(self, records: list[dict]) -> dict:
        by_task: dict[str, list] = {n: [] for n in self.tasks}
        for rec in records:
            if rec.get("task") in by_task:
                by_task[rec["task"]].append(rec)
        results = {n: t.task_result(by_task[n]) for n, t in self.tasks.items()}
        groups = {g.name: group_result(g, results) for g in self.spec.groups()}
        top = groups[self.name]
        if top["metrics"]:
            scores = {k: v["value"] for k, v in top["metrics"].items()}
        else:
            scores = {f"{n}:{k}": v["value"] for n, r in results.items()
                      for k, v in r["metrics"].items()}
        warnings = [f"{n}: {w}" for n, r in results.items() for w in r["warnings"]]
        return {"task": self.name, "output_type": self.output_type,
                "num_items": sum(r["num_items"] for r in results.values()),
                "results": results, "groups": groups, "scores": scores, "warnings": warnings}


def _filters_for(metric: str, leaf_keys: list[list[str]], named: Optional[object]) -> list[str]:
    if named is not None:
        return [named] if isinstance(named, str) else list(named)
    found = {key.split(",", 1)[1] for keys in leaf_keys for key in keys
             if key.split(",", 1)[0] == metric and "," in key}
    return sorted(found)


def group_keys(group: GroupSpec, leaf_keys: list[list[str]]):
    """(metric key, aggregate entry) of each metric the group reports, given the metric keys
    of its leaf tasks: every aggregate_metric_list entry times the filters it applies to."""
    for agg in group.aggregate:
        for flt in _filters_for(agg["metric"], leaf_keys, agg.get("filter_list")):
            key = f"{agg['metric']},{flt}"
            if any(key in keys for keys in leaf_keys):
                yield key, agg


def group_result(group: GroupSpec, results: dict[str, dict]) -> dict:
    leaves = [results[t.name] for t in group.leaves() if t.name in results]
    out: dict = {"alias": group.alias, "subtasks": [m.name for m in group.members],
                 "num_items": sum(r["num_items"] for r in leaves), "metrics": {},
                 "version": group.version}
    for key, agg in group_keys(group, [list(r["metrics"]) for r in leaves]):
        have = [r for r in leaves if key in r["metrics"] and r["num_items"] > 0]
        if not have:
            continue
        values = [r["metrics"][key]["value"] for r in have]
        sizes = [r["num_items"] for r in have]
        stderrs = [r["metrics"][key]["stderr"] for r in have]
        try:
            value, err = metrics.group_metric(values, sizes, stderrs, agg["weight_by_size"])
        except ZeroDivisionError:  # every subtask has one item: no pooled variance
            value, err = metrics.group_metric(values, sizes, [None], agg["weight_by_size"])
        out["metrics"][key] = {"value": value, "stderr": err, "n": sum(sizes),
                               "aggregation": "size-weighted mean" if agg["weight_by_size"]
                               else "mean", "tasks": len(have)}
    return out
