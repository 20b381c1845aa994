"""A composed `task` node -> effective settings per task (lm-eval's defaults filled in).

    resolve(node: TaskConfig) -> TaskSpec                 a task node
                              -> GroupSpec(members=[...]) a group node, members in order
    A group node's task-level fields (anything but its name, alias, aggregate_metric_list,
    metadata and subtasks) override the same fields of every member, nested groups too, the
    outer group winning over the inner one, as lm-eval's group configs do (so `task=mmlu
    task.num_fewshot=5` is lm-eval's `--num_fewshot 5`); where that replaces a subtask's own
    different value the subtask's warnings say so.

The defaults are lm-eval 0.4.13's TaskConfig and evaluator defaults: description "",
target_delimiter " ", fewshot_delimiter "\\n\\n", num_fewshot 0, output_type generate_until,
generation_kwargs {until: [fewshot_delimiter], do_sample: false, temperature: 0,
max_gen_toks: 256}, the metrics of the output type, the filter "none" (take_first), few-shot
seed 1234, 100000 bootstrap iterations. Unknown metric names, aggregations, samplers and output
types are errors here, before any data is read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from runner.tasks.config import TASK_KEYS, TaskConfig

OUTPUT_TYPES = ("generate_until", "multiple_choice", "loglikelihood", "loglikelihood_rolling")
# output type -> {metric: default aggregation}; the first entries are lm-eval's default list
METRICS = {
    "loglikelihood": {"perplexity": "perplexity", "acc": "mean"},
    "multiple_choice": {"acc": "mean", "acc_norm": "mean", "acc_bytes": "mean",
                        "exact_match": "mean", "f1": "f1", "mcc": "matthews_corrcoef"},
    "loglikelihood_rolling": {"word_perplexity": "weighted_perplexity",
                              "byte_perplexity": "weighted_perplexity",
                              "bits_per_byte": "bits_per_byte"},
    # f1 on generations is SQuAD's token F1 (max over the references)
    "generate_until": {"exact_match": "mean", "f1": "mean"},
}
DEFAULT_METRICS = {"loglikelihood": ["perplexity", "acc"],
                   "multiple_choice": ["acc", "acc_norm"],
                   "loglikelihood_rolling": ["word_perplexity", "byte_perplexity",
                                             "bits_per_byte"],
                   "generate_until": ["exact_match"]}
AGGREGATIONS = ("mean", "median", "perplexity", "weighted_perplexity", "bits_per_byte", "f1",
                "matthews_corrcoef")
SAMPLERS = ("default", "first_n")
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's fewshot_random_seed
DEFAULT_BOOTSTRAP_ITERS = 100000  # lm-eval's bootstrap_iters
DEFAULT_MAX_GEN_TOKS = 256


class TaskSpecError(ValueError):
    """A task config that composes but cannot run; the message is one line."""


@dataclass
class MetricSpec:
    name: str
    aggregation: str
    higher_is_better: Optional[bool]
    kwargs: dict  # exact_match's options


@dataclass
class FewshotSpec:
    sampler: str
    split: Optional[str]
    samples: Optional[list]
    fewshot_indices: Optional[list]
    process_docs: Optional[str]
    doc_to_text: Any
    doc_to_choice: Any
    doc_to_target: Any
    gen_prefix: Optional[str]
    fewshot_delimiter: str
    target_delimiter: str


@dataclass
class TaskSpec:
    name: str
    alias: str
    config: dict  # the node's fields after group overrides (for info/fingerprint)
    dataset_path: Optional[str]
    dataset_name: Optional[str]
    dataset_kwargs: Optional[dict]
    training_split: Optional[str]
    validation_split: Optional[str]
    test_split: Optional[str]
    process_docs: Optional[str]
    doc_to_text: Any
    doc_to_target: Any
    doc_to_choice: Any
    description: str
    target_delimiter: str
    fewshot_delimiter: str
    gen_prefix: Optional[str]
    fewshot: FewshotSpec
    num_fewshot: int
    output_type: str
    generation_kwargs: Optional[dict]
    repeats: int
    filters: list  # [(name, [step dicts])]
    metrics: list  # [MetricSpec]
    process_results: Optional[str]
    apply_chat_template: bool
    fewshot_as_multiturn: bool
    system_instruction: Optional[str]
    fewshot_seed: int
    bootstrap_iters: int
    version: Any
    warnings: list = field(default_factory=list)


@dataclass
class GroupSpec:
    name: str
    alias: str
    aggregate: list  # [AggMetricConfig as dict]
    members: list  # [TaskSpec | GroupSpec]
    version: Any

    def leaves(self) -> list[TaskSpec]:
        out: list[TaskSpec] = []
        for m in self.members:
            out.extend(m.leaves() if isinstance(m, GroupSpec) else [m])
        return out

    def groups(self) -> list["GroupSpec"]:
        """Every group of the tree, children before parents (lm-eval's aggregation order)."""
        out: list[GroupSpec] = []
        for m in self.members:
            if isinstance(m, GroupSpec):
                out.extend(m.groups())
        return out + [self]


Spec = Union[TaskSpec, GroupSpec]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve(node: TaskConfig, overrides: Optional[dict] = None) -> Spec:
    overrides = overrides or {}
    if node.group is not None:
        own = {k: _plain(getattr(node, k)) for k in TASK_KEYS if getattr(node, k) is not None}
        merged = {**own, **overrides}
        if not node.subtasks:
            raise TaskSpecError(f"group {node.group}: it has no subtasks")
        members = [resolve(child, merged) for child in node.subtasks.values()]
        names = [m.name for m in members]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TaskSpecError(f"group {node.group}: {sorted(dup)} appear twice")
        aggregate = [_plain(a) for a in node.aggregate_metric_list or []]
        for a in aggregate:
            if a["aggregation"] != "mean":
                raise TaskSpecError(f"group {node.group}: aggregate_metric_list: aggregation "
                                    f"{a['aggregation']!r} is not supported; allowed: mean")
        version = (node.metadata or {}).get("version", "N/A")
        return GroupSpec(node.group, node.group_alias or node.group, aggregate, members, version)
    if node.subtasks:
        raise TaskSpecError(f"task {node.task}: subtasks are only allowed on a group node "
                            "(set `group`)")
    values = {k: _plain(getattr(node, k)) for k in TASK_KEYS}
    replaced = [f"{k}={values[k]!r} is replaced by its group's {k}={v!r} (a group's fields "
                "override its subtasks', as in lm-eval)"
                for k, v in overrides.items() if values.get(k) is not None and values[k] != v]
    values.update(overrides)
    values["task"] = node.task
    spec = _task_spec(values, node.metadata)
    spec.warnings.extend(replaced)
    return spec


def _task_spec(v: dict, metadata: Optional[dict]) -> TaskSpec:
    name = v.get("task")
    if not name:
        raise TaskSpecError("a task node needs `task: NAME` (or `group: NAME` for a group)")
    where = f"task {name}"
    output_type = v.get("output_type") or "generate_until"
    if output_type not in OUTPUT_TYPES:
        raise TaskSpecError(f"{where}: output_type {output_type!r} is not supported; allowed: "
                            f"{', '.join(OUTPUT_TYPES)}")
    fewshot_delim = "\n\n" if v.get("fewshot_delimiter") is None else v["fewshot_delimiter"]
    target_delim = " " if v.get("target_delimiter") is None else v["target_delimiter"]
    warnings = []
    gen = v.get("generation_kwargs")
    if output_type == "generate_until":
        # lm-eval: a missing `until` is the few-shot delimiter, a missing max_gen_toks the
        # model's 256; do_sample/temperature stay as given (runner/tasks/sampling.py reads them)
        gen = {k: x for k, x in (gen or {}).items() if x is not None}
        until = gen.get("until", [fewshot_delim])
        until = [until] if isinstance(until, str) else until
        if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
            raise TaskSpecError(f"{where}: generation_kwargs.until must be a string or a list "
                                f"of strings, got {until!r:.80}")
        gen["until"] = list(until)
        gen.setdefault("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    elif gen is not None and any(x is not None for x in gen.values()):
        raise TaskSpecError(f"{where}: generation_kwargs are set but output_type is "
                            f"{output_type} (they apply to generate_until only)")
    else:
        gen = None
    metrics = _metrics(v.get("metric_list"), output_type, v.get("process_results"), where)
    filters = _filters(v.get("filter_list"), output_type, where)
    if v.get("should_decontaminate"):
        warnings.append("should_decontaminate is ignored: this runner does not decontaminate")
    fs_cfg = v.get("fewshot_config") or {}
    inherit = {"split": v.get("fewshot_split"), "process_docs": v.get("process_docs"),
               "fewshot_delimiter": fewshot_delim, "target_delimiter": target_delim,
               "gen_prefix": v.get("gen_prefix"), "doc_to_text": v.get("doc_to_text"),
               "doc_to_choice": v.get("doc_to_choice"), "doc_to_target": v.get("doc_to_target")}
    fs = {**inherit, **{k: x for k, x in fs_cfg.items() if x is not None}}
    sampler = fs.pop("sampler", None) or "default"
    if sampler not in SAMPLERS:
        raise TaskSpecError(f"{where}: fewshot_config.sampler {sampler!r} is not supported; "
                            f"allowed: {', '.join(SAMPLERS)}")
    fewshot = FewshotSpec(sampler=sampler, split=fs.get("split"), samples=fs.get("samples"),
                          fewshot_indices=fs.get("fewshot_indices"),
                          process_docs=fs.get("process_docs"), doc_to_text=fs.get("doc_to_text"),
                          doc_to_choice=fs.get("doc_to_choice"),
                          doc_to_target=fs.get("doc_to_target"), gen_prefix=fs.get("gen_prefix"),
                          fewshot_delimiter=fs["fewshot_delimiter"],
                          target_delimiter=fs["target_delimiter"])
    num_fewshot = v.get("num_fewshot") or 0
    repeats = v.get("repeats") or 1
    if num_fewshot < 0 or repeats < 1:
        raise TaskSpecError(f"{where}: num_fewshot must be >= 0 and repeats >= 1")
    if output_type != "generate_until" and repeats != 1:
        raise TaskSpecError(f"{where}: repeats={repeats} applies to generate_until only")
    if output_type in ("multiple_choice",) and v.get("doc_to_choice") is None:
        raise TaskSpecError(f"{where}: multiple_choice needs doc_to_choice")
    bootstrap = v.get("bootstrap_iters")
    return TaskSpec(
        name=name, alias=v.get("task_alias") or name,
        config={k: x for k, x in v.items() if x is not None},
        dataset_path=v.get("dataset_path"), dataset_name=v.get("dataset_name"),
        dataset_kwargs=v.get("dataset_kwargs"), training_split=v.get("training_split"),
        validation_split=v.get("validation_split"), test_split=v.get("test_split"),
        process_docs=v.get("process_docs"), doc_to_text=v.get("doc_to_text"),
        doc_to_target=v.get("doc_to_target"), doc_to_choice=v.get("doc_to_choice"),
        description=v.get("description") or "", target_delimiter=target_delim,
        fewshot_delimiter=fewshot_delim, gen_prefix=v.get("gen_prefix"), fewshot=fewshot,
        num_fewshot=num_fewshot, output_type=output_type, generation_kwargs=gen,
        repeats=repeats, filters=filters, metrics=metrics,
        process_results=v.get("process_results"),
        apply_chat_template=bool(v.get("apply_chat_template")),
        fewshot_as_multiturn=bool(v.get("fewshot_as_multiturn")),
        system_instruction=v.get("system_instruction"),
        fewshot_seed=DEFAULT_FEWSHOT_SEED if v.get("fewshot_seed") is None else v["fewshot_seed"],
        bootstrap_iters=DEFAULT_BOOTSTRAP_ITERS if bootstrap is None else bootstrap,
        version=(metadata or {}).get("version", "N/A"), warnings=warnings)


def _metrics(metric_list, output_type: str, process_results, where: str) -> list[MetricSpec]:
    known = METRICS[output_type]
    if metric_list is None:
        metric_list = [{"metric": m} for m in DEFAULT_METRICS[output_type]]
    out = []
    for i, m in enumerate(metric_list):
        name = m["metric"]
        if name not in known and not process_results:
            raise TaskSpecError(f"{where}: metric_list[{i}]: metric {name!r} is not supported "
                                f"for {output_type}; allowed: {', '.join(known)}")
        agg = m.get("aggregation") or known.get(name, "mean")
        if agg not in AGGREGATIONS:
            raise TaskSpecError(f"{where}: metric_list[{i}]: aggregation {agg!r} is not "
                                f"supported; allowed: {', '.join(AGGREGATIONS)}")
        kwargs = {k: m[k] for k in ("ignore_case", "ignore_punctuation", "ignore_numbers",
                                    "regexes_to_ignore") if m.get(k) is not None}
        if kwargs and name != "exact_match":
            raise TaskSpecError(f"{where}: metric_list[{i}]: {sorted(kwargs)} are options of "
                                f"exact_match, not of {name}")
        out.append(MetricSpec(name, agg, m.get("higher_is_better"), kwargs))
    return out


def _filters(filter_list, output_type: str, where: str) -> list:
    if filter_list is None:
        return [("none", [{"function": "take_first"}])]
    if output_type != "generate_until":
        raise TaskSpecError(f"{where}: filter_list applies to generate_until tasks (this one "
                            f"is {output_type})")
    out = []
    for f in filter_list:
        steps = [{k: x for k, x in step.items() if x is not None} for step in f["filter"]]
        out.append((f["name"], steps))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise TaskSpecError(f"{where}: filter_list names must differ: {names}")
    return out

