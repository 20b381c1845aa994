"""The `task` config group's schema: lm-eval's task YAML keys as typed dataclasses.

Data flow: conf/task/NAME.yaml (or a node built from a user's lm-eval file by
runner/tasks/yaml_loader.py) -> Hydra merges it into RunConfig.task, typed `TaskConfig`, so an
unknown key (`task.num_fewshots=3`) or a wrong type fails at compose time -> OmegaConf.to_object
-> runner/tasks/spec.py turns the node into effective per-task settings (lm-eval's defaults
filled in) -> runner/tasks/lm_eval_task.py builds the Task.

Every field is optional and None means "lm-eval's default" (description "", target_delimiter
" ", num_fewshot 0, ...), so a node carries only what its YAML says and a field set on a group
node overrides it in every subtask below, as lm-eval's group configs do.

A group (benchmark) is a node with `group` set and its members inline in `subtasks` (Hydra
composes them through the group file's defaults list, `- mmlu_anatomy@subtasks.mmlu_anatomy`),
so the resolved config holds every subtask's definition and `task.subtasks.X.num_fewshot=1`
overrides one of them. Functions cannot be written in a task config: the keys that take one in
lm-eval (process_docs, doc_to_target, process_results) take `native:NAME` from the allow-list in
runner/tasks/natives.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class MetricConfig:
    """One entry of metric_list (lm-eval's keys; the exact_match options are its kwargs)."""

    metric: str = MISSING
    aggregation: Optional[str] = None
    higher_is_better: Optional[bool] = None
    ignore_case: Optional[bool] = None
    ignore_punctuation: Optional[bool] = None
    ignore_numbers: Optional[bool] = None
    regexes_to_ignore: Optional[List[str]] = None


@dataclass
class FilterStep:
    """One step of a filter pipeline: `function` and that function's keyword arguments."""

    function: str = MISSING
    regex_pattern: Optional[str] = None
    group_select: Optional[int] = None
    fallback: Optional[str] = None
    k: Optional[int] = None
    mapping_dict: Optional[Dict[str, Any]] = None
    default_value: Any = None
    ignore_case: Optional[bool] = None
    ignore_punctuation: Optional[bool] = None
    regexes_to_ignore: Optional[List[str]] = None


@dataclass
class FilterConfig:
    """One entry of filter_list: a named pipeline; its name keys the metrics ("acc,none")."""

    name: str = MISSING
    filter: List[FilterStep] = field(default_factory=list)


@dataclass
class FewshotConfig:
    """lm-eval's fewshot_config: the sampler and formatting used for the few-shot examples."""

    sampler: Optional[str] = None  # default (seeded random) | first_n
    split: Optional[str] = None
    samples: Optional[List[Dict[str, Any]]] = None
    fewshot_indices: Optional[List[int]] = None
    process_docs: Optional[str] = None
    doc_to_text: Any = None
    doc_to_choice: Any = None
    doc_to_target: Any = None
    gen_prefix: Optional[str] = None
    fewshot_delimiter: Optional[str] = None
    target_delimiter: Optional[str] = None


@dataclass
class GenerationKwargs:
    """generation_kwargs of a generate_until task. The `sampling` group overrides these
    (runner/tasks/sampling.py): until -> stop, max_gen_toks -> max_tokens, do_sample false ->
    greedy, temperature -> temperature."""

    until: Any = None  # a string or a list of strings
    max_gen_toks: Optional[int] = None
    do_sample: Optional[bool] = None
    temperature: Optional[float] = None


@dataclass
class AggMetricConfig:
    """One entry of a group's aggregate_metric_list."""

    metric: str = MISSING
    aggregation: str = "mean"
    weight_by_size: bool = True
    filter_list: Any = None  # a filter name or list of names; None: every filter found


@dataclass
class TaskConfig:
    """A task or a group of tasks, in lm-eval's YAML keys (plus the runner's few below)."""

    # naming
    task: Optional[str] = None
    task_alias: Optional[str] = None
    tag: Any = None
    group: Optional[str] = None
    group_alias: Optional[str] = None
    aggregate_metric_list: Optional[List[AggMetricConfig]] = None
    subtasks: Dict[str, "TaskConfig"] = field(default_factory=dict)
    # data
    dataset_path: Optional[str] = None
    dataset_name: Optional[str] = None
    dataset_kwargs: Optional[Dict[str, Any]] = None
    training_split: Optional[str] = None
    validation_split: Optional[str] = None
    test_split: Optional[str] = None
    fewshot_split: Optional[str] = None
    process_docs: Optional[str] = None
    # prompt
    doc_to_text: Any = None
    doc_to_target: Any = None
    doc_to_choice: Any = None
    description: Optional[str] = None
    target_delimiter: Optional[str] = None
    fewshot_delimiter: Optional[str] = None
    gen_prefix: Optional[str] = None
    fewshot_config: Optional[FewshotConfig] = None
    num_fewshot: Optional[int] = None
    # scoring
    output_type: Optional[str] = None
    generation_kwargs: Optional[GenerationKwargs] = None
    repeats: Optional[int] = None
    filter_list: Optional[List[FilterConfig]] = None
    metric_list: Optional[List[MetricConfig]] = None
    process_results: Optional[str] = None
    should_decontaminate: Optional[bool] = None  # accepted and reported: decontamination is
    doc_to_decontamination_query: Optional[str] = None  # not run (a warning says so)
    metadata: Optional[Dict[str, Any]] = None
    # lm-eval's command-line options, per task here (a group's value applies to its subtasks)
    apply_chat_template: Optional[bool] = None  # --apply_chat_template (default false)
    fewshot_as_multiturn: Optional[bool] = None  # --fewshot_as_multiturn
    system_instruction: Optional[str] = None  # --system_instruction
    fewshot_seed: Optional[int] = None  # the 4th value of --seed (default 1234)
    bootstrap_iters: Optional[int] = None  # --bootstrap_iters (default 100000)


# Keys that describe a group node itself; every other non-None field of a group node is an
# override applied to its subtasks (lm-eval's group semantics).
GROUP_KEYS = ("group", "group_alias", "aggregate_metric_list", "subtasks", "metadata", "tag",
              "task")
TASK_KEYS = tuple(f for f in TaskConfig.__dataclass_fields__ if f not in GROUP_KEYS)
NESTED = {"metric_list": MetricConfig, "filter_list": FilterConfig, "fewshot_config": FewshotConfig,
          "generation_kwargs": GenerationKwargs, "aggregate_metric_list": AggMetricConfig}
