"""The task group on the command line, in-process and without a model: task=NAME replaces the
dataset group, dataset and task never mix (command line, sweeps, recipes, the Python API), an
unknown name is one line, a recipe's task=lmeval: choice reruns from the node it holds, and
the sampling presets' nulls mean "not set" (the task's values; SamplingParams' defaults)."""
from __future__ import annotations

import pytest
import yaml
from hydra.core.config_store import ConfigStore

from runner import cli
from runner.schemas import DatasetConfig, RunConfig, SamplingConfig
from runner.validation import ConfigError, sampling_errors, sampling_kwargs, validate_run


def _cfg(argv) -> RunConfig:
    return cli.to_run_config(cli.compose(argv))


def test_a_task_replaces_the_dataset_group():
    cfg = _cfg(["task=mc_mini", "limit=3"])
    assert cfg.dataset is None and cfg.task.task == "mc_mini" and cfg.limit == 3
    validate_run(cfg)
    default = _cfg([])
    assert default.task is None and default.dataset.name == "squad_mini"
    # the presets leave the generation length and stop strings to the task
    assert default.sampling.max_tokens is None and default.sampling.stop is None
    assert default.sampling.temperature == 0.0


def test_task_and_dataset_never_mix():
    cs = ConfigStore.instance()
    with pytest.raises(cli.CliError, match="dataset=squad and task=gsm8k were both given"):
        cli.prepare(["task=gsm8k", "dataset=squad"], cs)
    with pytest.raises(cli.CliError, match="dataset.chat=true and task=mc_mini"):
        cli.prepare(["dataset.chat=true", "task=mc_mini"], cs)
    with pytest.raises(cli.CliError, match="a sweep runs tasks or the dataset group"):
        cli.prepare(["-m", "task=mc_mini,null"], cs)
    argv, overrides, _ = cli.prepare(["-m", "task=mc_mini,arith_mini"], cs)
    assert overrides.count(cli.DROP_DATASET) == 1 and argv[1] == cli.DROP_DATASET
    # the overrides stay one run of positionals (argparse), flags after them included
    argv, overrides, args = cli.prepare(["task=mc_mini", "limit=2", "--cfg", "job"], cs)
    assert argv == [cli.DROP_DATASET, "task=mc_mini", "limit=2", "--cfg", "job"]
    assert args.cfg == "job" and cli._parse_args(argv).overrides == overrides
    _, overrides, _ = cli.prepare(["task=null"], cs)
    assert cli.DROP_DATASET not in overrides
    # the Python API: a RunConfig with both, or (mode=eval) with neither, is refused
    both = _cfg(["task=mc_mini"])
    both.dataset = DatasetConfig(name="squad_mini")
    with pytest.raises(ConfigError, match=r"both task \(mc_mini\) and dataset \(squad_mini\)"):
        validate_run(both)
    both.dataset = both.task = None
    with pytest.raises(ConfigError, match="needs a dataset or a task"):
        validate_run(both)


def test_an_unknown_task_name_is_one_line(tmp_path):
    with pytest.raises(cli.CliError) as err:
        cli.prepare(["task=arc_esay"], ConfigStore.instance())
    line = str(err.value)
    assert "\n" not in line and "did you mean arc_easy?" in line and "lmeval:PATH.yaml" in line
    # a name that only a hydra.searchpath folder holds is not refused here
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "mine.yaml").write_text("task: mine\n")
    cli.prepare([f"hydra.searchpath=[file://{tmp_path}]", "task=mine"], ConfigStore.instance())


def _recipe(tmp_path, choices, config) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"recipe_version": 2, "choices": choices, "config": config}))
    return f"recipe={path}"


def test_recipes_choose_a_task_or_a_dataset(tmp_path):
    node = {"task": "frozen", "dataset_path": "json", "output_type": "multiple_choice",
            "dataset_kwargs": {"data_files": {"test": "/nowhere/q.jsonl"}}}
    recipe = _recipe(tmp_path, {"task": "lmeval:/gone/quiz.yaml", "sampling": "greedy"},
                     {"task": node, "dataset": None, "limit": 2})
    cfg = _cfg([recipe])  # the file is gone: the recipe's own node is the task
    assert cfg.task.task == "frozen" and cfg.dataset is None and cfg.limit == 2
    # a group chosen on the command line replaces the recipe's alternative
    cfg = _cfg([recipe, "dataset=squad_mini"])
    assert cfg.task is None and cfg.dataset.name == "squad_mini" and cfg.limit == 2
    dataset_recipe = _recipe(tmp_path, {"dataset": "squad_mini"}, {"dataset": {"chat": False}})
    cfg = _cfg([dataset_recipe, "task=mc_mini"])
    assert cfg.dataset is None and cfg.task.task == "mc_mini"
    with pytest.raises(cli.CliError, match="config.task is set but choices names no task"):
        _cfg([_recipe(tmp_path, {}, {"task": node})])


def test_sampling_nulls_mean_not_set():
    assert sampling_errors(SamplingConfig(temperature=None, stop=None, max_tokens=None)) == []
    assert sampling_errors(SamplingConfig(temperature=None, top_p=0.9)) == []  # not greedy
    beam = SamplingConfig(use_beam_search=True, best_of=4, temperature=None)
    assert sampling_errors(beam) == ["sampling.temperature=null is not allowed in beam search "
                                     "mode (use_beam_search=true); allowed: 0"]
    kwargs = sampling_kwargs(SamplingConfig(temperature=None, stop=None, max_tokens=None))
    assert not {"temperature", "stop", "max_tokens"} & set(kwargs)
    from runner.engine import SamplingParams

    assert SamplingParams(**kwargs).temperature == 1.0  # SamplingParams' own default


def test_dataset_runs_keep_their_32_tokens():
    from runner.tasks.dataset_task import DEFAULT_MAX_TOKENS, DatasetTask

    task = DatasetTask(_cfg(["limit=1"]))
    assert task.base_params["max_tokens"] == DEFAULT_MAX_TOKENS == 32
    assert task.info()["max_tokens"] == 32
    assert DatasetTask(_cfg(["limit=1", "sampling.max_tokens=5"])).base_params["max_tokens"] == 5
