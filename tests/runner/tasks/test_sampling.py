"""The sampling group against a task's generation_kwargs (lm-eval's --gen_kwargs rule): values
set in `sampling` win, nulls take the task's, and a task that generates nothing refuses the
settings it would have to ignore (recorded instead, in a sweep's jobs)."""
from __future__ import annotations

import pytest

from runner.schemas import SamplingConfig
from runner.tasks.api import item_seed
from runner.tasks.lm_eval_task import build
from runner.tasks.sampling import SamplingRuleError, generation, inapplicable
from tests.runner.tasks import helpers

GSM8K_GEN = {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
             "temperature": 0.0, "max_gen_toks": 256}


def params(task_gen=GSM8K_GEN, repeats=1, eos="<eos>", **sampling):
    base = dict(temperature=None, max_tokens=None, stop=None)
    base.update(sampling)
    return generation(task_gen, SamplingConfig(**base), repeats, eos, "task t")


def test_nulls_take_the_task_values():
    out = params()
    assert out["params"]["temperature"] == 0.0 and out["params"]["max_tokens"] == 256
    assert out["until"] == GSM8K_GEN["until"] + ["<eos>"]
    assert out["params"]["stop"] == out["until"]


def test_set_values_win_and_fill_the_rest():
    out = params(temperature=0.7, top_p=0.9, max_tokens=32)["params"]
    assert (out["temperature"], out["top_p"], out["max_tokens"]) == (0.7, 0.9, 32)
    out = params(stop=["\n"])
    assert out["until"] == ["\n", "<eos>"]
    # an empty stop list is "not set" too (the sampling presets write stop: [])
    assert params(stop=[])["until"][:3] == GSM8K_GEN["until"]


@pytest.mark.parametrize("task_gen,expected", [
    ({"until": ["x"], "do_sample": True, "temperature": 0.5}, 0.5),
    ({"until": ["x"], "do_sample": False, "temperature": 0.9}, 0.0),  # do_sample false: greedy
    ({"until": ["x"], "temperature": 0.3}, 0.3),
    ({"until": ["x"]}, 0.0),
])
def test_task_temperature_follows_lmeval_normalization(task_gen, expected):
    assert params({**task_gen, "max_gen_toks": 8})["params"]["temperature"] == expected


def test_repeats_and_beam_rules():
    assert params(repeats=4, temperature=0.8)["params"]["n"] == 4
    with pytest.raises(SamplingRuleError, match="sampling.n=2 conflicts with the task's "
                                                "repeats=4"):
        params(repeats=4, n=2)
    with pytest.raises(SamplingRuleError, match="beam search"):
        params(use_beam_search=True, best_of=4, temperature=0.0)


def test_inapplicable_lists_only_settings_that_would_be_ignored():
    d = SamplingConfig()
    assert inapplicable(SamplingConfig(), d) == []
    assert inapplicable(SamplingConfig(temperature=0.0, max_tokens=None, stop=None), d) == []
    assert inapplicable(SamplingConfig(temperature=0.7, top_p=0.95), d) == [
        "sampling.temperature=0.7", "sampling.top_p=0.95"]
    assert inapplicable(SamplingConfig(temperature=0.0, max_tokens=32), d) == [
        "sampling.max_tokens=32"]


def test_generation_settings_reach_requests_and_records(in_hub, engine):
    node = helpers.preset_node("gsm8k")
    task = build(helpers.run_config(node, limit=2, run_seed=11, temperature=0.6,
                                    max_tokens=4))
    tok = engine.get_tokenizer()
    reqs = [task.requests(d, tok, 2048)[0] for d in task.docs()]
    seeds = [r.params.seed for r in reqs]
    assert seeds == [item_seed(11, d.id) for d in task.docs()] and seeds[0] != seeds[1]
    assert all(r.params.temperature == 0.6 and r.params.max_tokens == 4 for r in reqs)
    assert reqs[0].params.stop == ["Question:", "</s>", "<|im_end|>"]
    records = helpers.run_on_engine(task, engine, 2048)
    assert records[0]["params"]["seed"] == seeds[0]
    assert records[0]["params"]["temperature"] == 0.6
    # greedy: no per-item seed; a fixed sampling.seed is used as given
    greedy = build(helpers.run_config(node, limit=1, temperature=0.0))
    assert greedy.requests(greedy.docs()[0], tok, 2048)[0].params.seed is None
    fixed = build(helpers.run_config(node, limit=2, temperature=0.9, seed=3))
    assert [fixed.requests(d, tok, 2048)[0].params.seed for d in fixed.docs()] == [3, 3]


def test_invalid_effective_settings_fail_at_build(in_hub):
    node = helpers.preset_node("gsm8k")
    with pytest.raises(SamplingRuleError, match="effective sampling settings are invalid"):
        build(helpers.run_config(node, top_p=0.5))  # the task is greedy: top_p must be 1


def test_loglikelihood_task_refuses_sampling_or_records_it(in_hub):
    node = helpers.preset_node("arc_easy")
    build(helpers.run_config(node, temperature=0.0))  # greedy is how it scores: fine
    with pytest.raises(SamplingRuleError) as e:
        build(helpers.run_config(node, temperature=0.7))
    msg = str(e.value)
    assert msg.startswith("sampling.temperature=0.7 do not apply to task arc_easy")
    assert "multiple_choice" in msg and "\n" not in msg
    task = build(helpers.run_config(node, temperature=0.7), strict_sampling=False)
    assert any("sampling.temperature=0.7" in w for w in task.info()["warnings"])
    assert any("sampling.temperature=0.7" in w for w in task.aggregate([])["warnings"])


def test_sweep_over_mixed_tasks_composes_and_builds(in_hub):
    """`-m task=gsm8k,arc_easy sampling.temperature=0,0.7`: every job builds; the generation
    task samples at each temperature, the multiple-choice one scores greedily, and in its
    T=0.7 job (a sweep job: strict_sampling=False) the unused value is recorded."""
    from omegaconf import OmegaConf

    from runner import cli

    for task_name in ("gsm8k", "arc_easy"):
        for temperature in ("0", "0.7"):
            # the shipped sampling preset as it is: its null max_tokens / stop are the task's
            cfg = OmegaConf.to_object(cli.compose([
                f"task={task_name}", f"sampling.temperature={temperature}"]))
            task = build(cfg, strict_sampling=False)
            info = task.info()
            if task_name == "gsm8k":
                assert info["generation"]["temperature"] == float(temperature)
                assert info["generation"]["max_tokens"] == 256
            else:
                noted = any("sampling.temperature" in w for w in info["warnings"])
                assert noted == (temperature == "0.7")


def test_mixed_group_applies_sampling_to_its_generation_subtasks(tmp_path, monkeypatch):
    import json

    (tmp_path / "d.jsonl").write_text(json.dumps({"q": "x", "o": ["a", "b"], "g": 0}) + "\n")
    data = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "d.jsonl"}},
            "test_split": "test", "doc_to_text": "{{q}}"}
    node = {"group": "mix", "subtasks": {
        "gen": {"task": "gen", **data, "doc_to_target": "{{o[0]}}"},
        "mc": {"task": "mc", **data, "output_type": "multiple_choice", "doc_to_choice": "o",
               "doc_to_target": "g"}}}
    monkeypatch.chdir(tmp_path)
    task = build(helpers.run_config(node, temperature=0.7))
    assert task.output_type == "mixed"
    assert task.info()["tasks"]["gen"]["generation"]["temperature"] == 0.7
    assert task.info()["tasks"]["mc"]["warnings"] == []
