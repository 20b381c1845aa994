"""The task factory the run lifecycle calls: the composed config -> one runner.tasks.api.Task.

    build(cfg) -> spec.resolve(cfg.task)          effective settings per task, group overrides
               -> the sampling rule (sampling.py)  generate_until: checked now (so a bad value
                                                   fails before any engine starts); a tree that
                                                   generates nothing: sampling values that would
                                                   be ignored are an error, or, with
                                                   strict_sampling=False (a sweep's job), a
                                                   warning recorded in info() and metrics
               -> LmEvalTask per leaf (cfg.sampling, cfg.seed, cfg.limit)
               -> that task, or a TaskGroup over the leaves

`cfg` is the RunConfig dataclass tree (cfg.task: TaskConfig, cfg.sampling: SamplingConfig,
cfg.seed, cfg.limit). Nothing is loaded here: datasets are read on the first docs() call.
"""
from __future__ import annotations

from runner.engine.sampling_params import SamplingParams
from runner.tasks.api import Task
from runner.tasks.group import TaskGroup
from runner.tasks.sampling import SamplingRuleError, generation, inapplicable
from runner.tasks.spec import GroupSpec, TaskSpecError, resolve
from runner.tasks.task import LmEvalTask
from runner.validation import sampling_errors


def build(cfg, *, strict_sampling: bool = True) -> Task:
    """The Task for cfg.task. strict_sampling=False turns "sampling settings that this task
    cannot use" from an error into a recorded warning (for sweeps over mixed tasks)."""
    from runner.schemas import SamplingConfig

    node = getattr(cfg, "task", None)
    if node is None:
        raise TaskSpecError("no task selected: choose one with task=NAME (conf/task/) or "
                            "task=lmeval:FILE.yaml")
    limit = getattr(cfg, "limit", None)
    if limit is not None and limit < 1:
        raise TaskSpecError(f"limit={limit} is not allowed; allowed: >= 1 or null")
    spec = resolve(node)
    leaves = spec.leaves() if isinstance(spec, GroupSpec) else [spec]
    names = [leaf.name for leaf in leaves]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TaskSpecError(f"group {spec.name}: the tasks {twice} appear more than once in "
                            "its tree; each task is evaluated once, so list it in one place")
    sampling = cfg.sampling if cfg.sampling is not None else SamplingConfig()
    generating = [leaf for leaf in leaves if leaf.output_type == "generate_until"]
    for leaf in generating:
        where = f"task {leaf.name}"
        params = generation(leaf.generation_kwargs, sampling, leaf.repeats, None,
                            where)["params"]
        # the runner's rules first (runner/validation.py: no setting that greedy decoding would
        # ignore, where SamplingParams quietly resets it as vLLM's does), then the engine's
        errors = sampling_errors(params)
        if errors:
            raise SamplingRuleError(f"{where}: the effective sampling settings are invalid: "
                                    f"{errors[0]}")
        try:
            SamplingParams(**{**params, "seed": params["seed"] or 0})
        except ValueError as e:
            raise SamplingRuleError(f"{where}: the effective sampling settings are invalid: "
                                    f"{str(e).splitlines()[0]}") from None
    if not generating:
        unused = inapplicable(sampling, SamplingConfig())
        if unused:
            kinds = sorted({leaf.output_type for leaf in leaves})
            msg = (f"{', '.join(unused)} do not apply to task {spec.name} ({'/'.join(kinds)}: "
                   "scored from prompt logprobs, nothing is sampled); set them to null or "
                   "their defaults")
            if strict_sampling:
                raise SamplingRuleError(msg)
            for leaf in leaves:
                leaf.warnings.append(f"not used: {msg}")
    tasks = {leaf.name: LmEvalTask(leaf, sampling, cfg.seed, limit) for leaf in leaves}
    if isinstance(spec, GroupSpec):
        return TaskGroup(spec, tasks)
    return tasks[spec.name]
