"""The run lifecycle as a user meets it, each case a `python -m runner` subprocess on the tiny
random Llama: SIGTERM and Ctrl-C end as `interrupted` with one line and resume; one writer per
run folder; a failed session on a finished run keeps its files; symlinks in a run folder are
refused; secrets reach no file; templates mean what they say; the progress bar moves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import (only_run_dir, read_json, read_predictions, run_cli, run_dirs,
                               runner_env, tiny_args, write_jsonl)

# The real CLI, which signals itself right after the journal got its Nth line: exactly what a
# SIGTERM from outside at that moment does, without racing a fast engine.
_SIGNAL_MAIN = """
import os, signal, sys
import runner.store as store
original_append = store.PredictionLog.append
def append(self, record):
    original_append(self, record)
    if len(self.records) == int(os.environ["SIGNAL_AFTER"]):
        os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL_NAME"]))
store.PredictionLog.append = append
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_main(code: str, args, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          env={**runner_env(), **env}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signals_end_the_run_as_interrupted_and_it_resumes(tiny_llama, tmp_path, sig, code):
    write_jsonl(tmp_path / "data.jsonl", 12)
    out = tmp_path / "out"
    args = tiny_args(tiny_llama, "data.jsonl", out, "run_id=r1")
    proc = _run_main(_SIGNAL_MAIN, args, tmp_path, SIGNAL_AFTER="4", SIGNAL_NAME=sig)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("runner: interrupted")]
    assert len(lines) == 1 and f"({sig})" in lines[0] and "resume with:" in lines[0], proc.stderr
    assert "run_id=r1" in lines[0] and "4 items kept" in lines[0]
    run_dir = out / "default" / "r1"
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "interrupted" and sig in manifest["error"]
    assert len(read_predictions(run_dir)) == 4 and not (run_dir / "metrics.json").exists()
    assert not (run_dir / ".lock").exists()

    resume = lines[0].split("resume with: ", 1)[1]
    assert resume.startswith("python -m runner ")
    run_cli(resume.split()[3:], cwd=tmp_path, check=True)
    ids = [p["id"] for p in read_predictions(run_dir)]
    assert sorted(ids) == [f"q{i:03d}" for i in range(12)]
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "completed" and "error" not in manifest
    assert [s["status"] for s in manifest["sessions"]] == ["interrupted", "completed"]


def test_sigterm_from_outside_mid_run(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 300)
    out = tmp_path / "out"
    args = tiny_args(tiny_llama, "data.jsonl", out, "run_id=ext", "engine.max_num_seqs=1",
                     "sampling.ignore_eos=true", "sampling.max_tokens=16")
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path,
                            env=runner_env(), stderr=subprocess.PIPE, text=True)
    preds = out / "default" / "ext" / "predictions.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if preds.is_file() and preds.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "runner: interrupted (SIGTERM)" in err
    manifest = read_json(out / "default" / "ext" / "manifest.json")
    assert manifest["status"] == "interrupted"
    kept = read_predictions(out / "default" / "ext")
    assert 3 <= len(kept) < 300 and len({p["id"] for p in kept}) == len(kept)


def test_a_second_writer_is_refused_with_the_holders_pid(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 200)
    out = tmp_path / "out"
    args = tiny_args(tiny_llama, "data.jsonl", out, "run_id=shared", "engine.max_num_seqs=1",
                     "sampling.ignore_eos=true", "sampling.max_tokens=16")
    first = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path,
                             env=runner_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = out / "default" / "shared" / ".lock"
    deadline = time.time() + 300
    while time.time() < deadline and not lock.is_file() and first.poll() is None:
        time.sleep(0.05)
    second = run_cli(args, cwd=tmp_path, timeout=300)
    first.communicate(timeout=600)
    assert first.returncode == 0
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert f"is in use by PID {first.pid}" in second.stderr, second.stderr
    ids = [p["id"] for p in read_predictions(out / "default" / "shared")]
    assert len(ids) == len(set(ids)) == 200  # one writer: every item exactly once


# A failure of a session that finds every item done, after the folder was opened.
_FAIL_AFTER_OPEN = """
import sys
import runner.run.loop as loop
def drive(*a, **k):
    raise RuntimeError("the engine fell over")
loop.drive = drive
import runner.run.modes.eval as ev
ev.drive = drive
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_resume_of_a_finished_run_keeps_its_files(tiny_model_factory, tmp_path):
    import shutil

    model = Path(tiny_model_factory("llama"))
    mine = tmp_path / "model"
    shutil.copytree(model, mine)
    write_jsonl(tmp_path / "data.jsonl", 3)
    out = tmp_path / "out"
    args = tiny_args(mine, "data.jsonl", out, "run_id=done")
    run_cli(args, cwd=tmp_path, check=True)
    run_dir = out / "default" / "done"
    before = {n: (run_dir / n).read_bytes() for n in ("metrics.json", "benchmark.json",
                                                      "predictions.jsonl")}
    proc = _run_main(_FAIL_AFTER_OPEN, args, tmp_path)
    assert proc.returncode == 1 and "the engine fell over" in proc.stderr
    assert "manifest status completed" in proc.stderr
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "completed"
    assert manifest["sessions"][-1]["status"] == "failed"
    # and a rerun whose model went missing fails before touching the folder
    shutil.rmtree(mine)
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name


def test_symlinks_in_a_run_folder_are_refused_not_followed(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    args = tiny_args(tiny_llama, "data.jsonl", out, "run_id=linked")
    run_cli(args, cwd=tmp_path, check=True)
    run_dir = out / "default" / "linked"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (run_dir / "predictions.jsonl").unlink()
    (run_dir / "predictions.jsonl").symlink_to(victim)
    (run_dir / "run.log").unlink()
    (run_dir / "run.log").symlink_to(victim)
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "symlink" in proc.stderr
    assert victim.read_text() == "keep me\n"


def test_secrets_reach_no_file_and_the_folder_is_private(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    secret = "sk-test-0123456789abcdef"
    proc = run_cli([*tiny_args(tiny_llama, "data.jsonl", out), f"engine.api_key={secret}"],
                   cwd=tmp_path, check=True)
    run_dir = only_run_dir(out)
    for f in run_dir.iterdir():
        assert secret not in f.read_text(errors="replace"), f.name
    assert secret not in proc.stdout
    manifest = read_json(run_dir / "manifest.json")
    assert "engine.api_key=<redacted>" in manifest["overrides"]
    recipe = (run_dir / "recipe.yaml").read_text()
    assert "${oc.env:OPENAI_API_KEY,null}" in recipe
    assert run_dir.stat().st_mode & 0o007 == 0  # a secret was given: no access for others
    # the recipe reruns, reading the key from the environment
    run_cli([f"recipe={run_dir / 'recipe.yaml'}", f"output_root={tmp_path / 'out2'}"],
            cwd=tmp_path, check=True)
    assert manifest["backend"]["cpu_threads"] == 1  # OMP_NUM_THREADS=1 in the test env


@pytest.mark.parametrize("template,newline", [
    ("Q: {prompt}\\nA:", True),                   # what the shell passes for '...\nA:'
    ("'Q: {prompt}\\nA:'", True),                 # quoted for Hydra by hand
    ("Q: {prompt}\\\\nA:", False),                # an escaped backslash: literal, warned
])
def test_templates_are_taken_as_typed(tiny_llama, tmp_path, template, newline):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    proc = run_cli([*tiny_args(tiny_llama, "data.jsonl", out), f"dataset.template={template}",
                    "dataset.prompt_field=null"], cwd=tmp_path, check=True)
    prompt = read_predictions(only_run_dir(out))[0]["prompt"]
    assert prompt.startswith("Q: Question 0") and prompt.endswith("A:")
    assert ("\n" in prompt) is newline and ("\\n" in prompt) is not newline
    warned = "renders a literal backslash-n" in proc.stderr
    assert warned is not newline
    manifest = read_json(only_run_dir(out) / "manifest.json")
    assert bool(manifest["dataset"]["warnings"]) is not newline


def test_progress_bar_moves_during_prefill(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 6)
    out = tmp_path / "out"
    args = [*tiny_args(tiny_llama, "data.jsonl", out), "use_tqdm=true",
            "engine.max_num_batched_tokens=8", "engine.max_num_seqs=8"]
    proc = _run_main("import sys; from runner.cli import main; sys.exit(main(sys.argv[1:]))",
                     args, tmp_path, TQDM_MININTERVAL="0")
    assert proc.returncode == 0, proc.stderr
    frames = [f for f in proc.stderr.replace("\r", "\n").splitlines() if "prompt tokens" in f]
    early = [f for f in frames if " 0/6 " in f and "prompt tokens 0/" not in f]
    assert early, frames[:5]  # prompt tokens counted while no item had finished


def test_a_recipe_cannot_write_outside_output_root(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"choices": {}, "config": {"experiment": "../../escape"}}))
    out = tmp_path / "a" / "b" / "out"
    proc = run_cli([f"recipe={recipe}", f"output_root={out}"], cwd=tmp_path)
    assert proc.returncode == 2 and "experiment='../../escape' is not allowed" in proc.stderr
    assert not (tmp_path / "a").exists() and not run_dirs(tmp_path)
    assert os.listdir(tmp_path) == ["r.yaml"]


def test_a_sweep_stores_no_secret(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    secret = "sk-sweep-0123456789abcdef"
    sweep = out / "sweep"
    run_cli(["-m", *tiny_args(tiny_llama, "data.jsonl", out), f"engine.api_key={secret}",
             "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, check=True)
    files = [f for f in sweep.rglob("*") if f.is_file()]
    assert any(f.name == "multirun.yaml" for f in files) and len(run_dirs(out)) == 2
    for f in files:
        assert secret not in f.read_text(errors="replace"), f
    assert sweep.stat().st_mode & 0o007 == 0
