"""The task function returns the run's primary metric (or `sweep_objective`), so Hydra's
sweepers (optuna, nevergrad, ax) can optimise it; a failed job returns NaN, which they record as
a failed trial (issue 27.7: optuna stopped with "Return value must be float-castable")."""
from __future__ import annotations

import math
import os

import pytest

from runner import cli
from tests.e2e.helpers import write_jsonl


def _task_value(argv):
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from runner.schemas import register_configs

    cs = ConfigStore.instance()
    register_configs(cs)
    _, overrides, _ = cli.prepare(list(argv), cs)
    with initialize_config_dir(config_dir=os.fspath(cli.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    failures: list = []
    return cli._make_task(failures, ["python", "-m", "runner", *argv])(cfg), failures


@pytest.mark.parametrize("objective,key", [(None, "exact_match"), ("f1", "f1")])
def test_the_task_function_returns_the_objective(tiny_llama, tmp_path, objective, key):
    import json

    data = write_jsonl(tmp_path / "d.jsonl", 3)
    out = tmp_path / "out"
    argv = ["model=local", f"model.model={tiny_llama}", f"dataset=jsonl:{data}",
            "dataset.reference_field=answer", "dataset.metric=squad", f"output_root={out}",
            "use_tqdm=false", "sampling.max_tokens=4"]
    if objective:
        argv.append(f"sweep_objective={objective}")
    value, failures = _task_value(argv)
    assert not failures and isinstance(value, float) and not math.isnan(value)
    (metrics,) = out.glob("*/*/metrics.json")
    assert value == json.loads(metrics.read_text())["scores"][key]


def test_a_failed_job_returns_nan(tmp_path):
    value, failures = _task_value(["model=local", f"model.model={tmp_path}/none",
                                   f"output_root={tmp_path / 'out'}"])
    assert math.isnan(value) and len(failures) == 1


@pytest.mark.parametrize("objective,key", [(None, "acc,none"),
                                           ('"acc_norm,none"', "acc_norm,none")])
def test_an_lmeval_task_returns_its_score_key(tiny_llama, tmp_path, objective, key):
    """An lm-eval task's info() names its score keys before it runs: the default objective is
    the first ("acc,none"), and a sweep_objective is checked against them."""
    import json

    out = tmp_path / "out"
    argv = ["model=local", f"model.model={tiny_llama}", "task=mc_mini", "limit=2",
            f"output_root={out}", "use_tqdm=false"]
    value, failures = _task_value(argv + ([f"sweep_objective={objective}"] if objective else []))
    assert not failures and isinstance(value, float) and not math.isnan(value)
    (metrics,) = out.glob("*/*/metrics.json")
    assert value == json.loads(metrics.read_text())["scores"][key]
    value, failures = _task_value(argv + ["sweep_objective=acc"])
    assert math.isnan(value) and "'acc' is not a metric of this run; its metrics: acc,none, " \
        "acc_norm,none" in str(failures[0])
