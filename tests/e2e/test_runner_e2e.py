"""`python -m runner` end to end on a tiny random Llama (tests/tiny_models.py) and jsonl data:
one run and its output folder, a three-job sweep with its summary, a rerun from a run's
recipe.yaml, a dataset sweep, and a run killed half-way that resumes. Each run is a subprocess,
as a user would start it."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import (only_run_dir, read_json, read_predictions, run_cli, run_dirs,
                               runner_env, tiny_args, write_jsonl)

FILES = {"config.yaml", "recipe.yaml", "manifest.json", "predictions.jsonl", "metrics.json",
         "benchmark.json", "run.log"}


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("llama")


def _by_id(records):
    return {r["id"]: r for r in records}


def test_single_run_writes_a_complete_output_folder(tiny, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 6)
    out = tmp_path / "out"
    proc = run_cli(tiny_args(tiny, "data.jsonl", out, "experiment=e2e"), cwd=tmp_path, check=True)
    run_dir = only_run_dir(out)
    assert run_dir.parent.name == "e2e"
    assert set(os.listdir(run_dir)) == FILES
    assert str(run_dir) in proc.stdout

    preds = read_predictions(run_dir)
    assert [p["id"] for p in sorted(preds, key=lambda p: p["index"])] == [
        f"q{i:03d}" for i in range(6)]
    for p in preds:
        assert p["references"] == ["the old sailor"]
        assert p["prompt"].startswith("Question ")
        out0 = p["outputs"][0]
        assert out0["text"] == p["prediction"]
        assert 1 <= len(out0["token_ids"]) <= 8
        assert out0["finish_reason"] in ("stop", "length")
        assert isinstance(out0["cumulative_logprob"], float)
        # The per-item score is exact match computed by hand here.
        assert p["scores"] == {"exact_match": 100.0 * (p["prediction"].strip() == "the old sailor")}

    # Greedy tokens equal HF transformers' greedy generation for the recorded prompt ids.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    for p in preds:
        assert p["prompt_token_ids"] == tok(p["prompt"]).input_ids
        ids = torch.tensor([p["prompt_token_ids"]])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, eos_token_id=2, pad_token_id=2)
        assert p["outputs"][0]["token_ids"] == gen[0, ids.shape[1]:].tolist(), p["id"]

    metrics = read_json(run_dir / "metrics.json")
    expected = sum(p["scores"]["exact_match"] for p in preds) / len(preds)
    assert metrics["scores"]["exact_match"] == pytest.approx(expected)
    assert metrics["num_items"] == 6 and metrics["metric"] == "exact_match"

    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "completed"
    assert manifest["run_id"] == run_dir.name
    assert len(manifest["config_hash"]) == 64 and len(manifest["content_hash"]) == 64
    assert set(manifest["git"]) == {"commit", "dirty"}
    assert "torch" in manifest["packages"] and "transformers" in manifest["packages"]
    weights = manifest["model"]["weights"]
    assert weights, manifest["model"]
    for w in weights:
        assert w["sha256"] == hashlib.sha256(Path(w["file"]).read_bytes()).hexdigest()
    assert manifest["dataset"]["num_examples"] == 6
    assert len(manifest["dataset"]["fingerprint"]) == 64
    assert manifest["seeds"]["run"] == 0
    assert manifest["hardware"]["cpu_count"] >= 1

    bench = read_json(run_dir / "benchmark.json")
    assert bench["num_requests"] == 6 and bench["device"] == "cpu"
    assert bench["output_tokens"] == sum(len(p["outputs"][0]["token_ids"]) for p in preds)
    assert bench["throughput"]["output_tokens_per_s"] > 0
    for key in ("ttft", "e2e"):
        assert bench["latency_s"][key]["p50"] <= bench["latency_s"][key]["p99"]
    assert bench["memory"]["rss_peak_bytes"] > 0
    assert bench["engine_stats"]["num_generation_tokens"] >= bench["output_tokens"]


def test_sweep_of_three_jobs_writes_summary(tiny, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 4)
    sweep = tmp_path / "sweep"
    run_cli(["-m", *tiny_args(tiny, "data.jsonl", tmp_path / "out"), "sampling=random",
             "sampling.temperature=0.2,0.7,1.0", f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path, check=True)
    for num in range(3):
        m = read_json(sweep / str(num) / "manifest.json")
        assert m["status"] == "completed"
        assert (sweep / str(num) / "metrics.json").is_file()
        assert len(read_predictions(sweep / str(num))) == 4
    temps = [read_json(sweep / str(n) / "manifest.json")["overrides"][-1] for n in range(3)]
    assert temps == [f"sampling.temperature={t}" for t in ("0.2", "0.7", "1.0")]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["sampling.temperature"] for r in rows] == ["0.2", "0.7", "1.0"]
    assert all(r["status"] == "completed" and r["exact_match"] != "" for r in rows)
    assert "sampling.temperature" in (sweep / "summary.md").read_text()
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_dataset_specs_sweep(tiny, tmp_path):
    # hf: reads a dataset saved locally (no hub), jsonl: a file; both swept as group options.
    import datasets

    rows = {"id": ["a0", "a1"], "prompt": ["Question 1: who wrote it?", "Question 2: who?"],
            "answer": ["the old sailor", "the old sailor"]}
    saved = tmp_path / "saved_set"
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows)}).save_to_disk(saved)
    write_jsonl(tmp_path / "b.jsonl", 3, prefix="b")
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_args(tiny, "b.jsonl", tmp_path / "out") if not a.startswith("dataset=")]
    run_cli(["-m", *args, f"dataset=hf:{saved},jsonl:b.jsonl", f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path, check=True)
    assert sorted(p["id"] for p in read_predictions(sweep / "0")) == ["a0", "a1"]
    assert sorted(p["id"] for p in read_predictions(sweep / "1")) == ["b000", "b001", "b002"]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["dataset"] for r in rows] == [f"hf:{saved}", "jsonl:b.jsonl"]


def test_rerun_of_recipe_gives_identical_predictions(tiny, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 5)
    # Random sampling: identical reruns need the per-item seeds, not just greedy decoding.
    run_cli(tiny_args(tiny, "data.jsonl", tmp_path / "out1", "sampling=random",
                      "sampling.temperature=1.0", "sampling.n=2", "seed=7"),
            cwd=tmp_path, check=True)
    first = only_run_dir(tmp_path / "out1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli([f"recipe={first / 'recipe.yaml'}", f"output_root={tmp_path / 'out2'}"],
            cwd=elsewhere, check=True)
    second = only_run_dir(tmp_path / "out2")
    a, b = _by_id(read_predictions(first)), _by_id(read_predictions(second))
    assert a.keys() == b.keys() and len(a) == 5
    for k in a:
        assert a[k]["outputs"] == b[k]["outputs"]
        assert len(a[k]["outputs"]) == 2
    ma, mb = read_json(first / "manifest.json"), read_json(second / "manifest.json")
    assert ma["config_hash"] == mb["config_hash"] and ma["content_hash"] == mb["content_hash"]
    assert (first / "config.yaml").read_text() != "" and \
        (first / "config.yaml").read_text().replace(str(tmp_path / "out1"), "") == \
        (second / "config.yaml").read_text().replace(str(tmp_path / "out2"), "")


# Runs the real CLI in a subprocess whose process SIGKILLs itself in the middle of writing the
# prediction after the first KILL_AFTER ones: exactly the state a crash leaves (N complete lines
# on disk, a torn last line, manifest still "running"), without racing a fast engine.
KILL_AFTER = 7
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


def test_killed_run_resumes_with_every_prompt_once(tiny, tmp_path):
    total = 30
    write_jsonl(tmp_path / "data.jsonl", total)
    out = tmp_path / "out"
    args = tiny_args(tiny, "data.jsonl", out, "run_id=killed", "sampling.ignore_eos=true",
                     "sampling.max_tokens=16")
    env = {**runner_env(), "KILL_AFTER": str(KILL_AFTER)}
    killed = subprocess.run([sys.executable, "-c", _KILLING_MAIN, *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = out / "default" / "killed"
    preds_path = run_dir / "predictions.jsonl"
    assert not preds_path.read_text().endswith("\n")  # the torn line is there
    before = read_predictions_complete(preds_path)
    assert len(before) == KILL_AFTER
    assert read_json(run_dir / "manifest.json")["status"] == "running"
    assert not (run_dir / "metrics.json").exists()
    # kill -9 leaves the dead runner's PID in .lock (stale) and maybe a half-written temp file
    assert (run_dir / ".lock").read_text().split()[0].isdigit()
    (run_dir / ".manifest.json.x1y2z3.tmp").write_text('{"status": "runn')

    run_cli(args, cwd=tmp_path, check=True)
    assert not (run_dir / ".manifest.json.x1y2z3.tmp").exists() and \
        not (run_dir / ".lock").exists()
    preds = read_predictions(run_dir)
    ids = [p["id"] for p in preds]
    assert sorted(ids) == [f"q{i:03d}" for i in range(total)]  # every prompt exactly once
    assert preds[:KILL_AFTER] == before  # finished prompts were not redone
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "completed"
    assert len(manifest["sessions"]) == 2
    assert manifest["sessions"][0]["status"] == "killed"  # its PID was dead: not left running
    assert manifest["sessions"][1]["resumed_items"] == KILL_AFTER
    assert manifest["sessions"][1]["todo_items"] == total - KILL_AFTER
    bench = read_json(run_dir / "benchmark.json")
    assert bench["num_requests"] == total - KILL_AFTER and bench["num_resumed"] == KILL_AFTER
    assert read_json(run_dir / "metrics.json")["num_items"] == total
    assert "truncated" in (run_dir / "run.log").read_text()

    # Resumed outputs equal an uninterrupted run's (greedy, batch-independent).
    clean_args = [a if a != "run_id=killed" else "run_id=clean" for a in args]
    run_cli(clean_args, cwd=tmp_path, check=True)
    clean = _by_id(read_predictions(out / "default" / "clean"))
    for p in preds:
        for got, want in zip(p["outputs"], clean[p["id"]]["outputs"], strict=True):
            assert got["token_ids"] == want["token_ids"] and got["text"] == want["text"]
            # Summation order may differ between batches: logprobs agree to float32 rounding.
            assert got["cumulative_logprob"] == pytest.approx(want["cumulative_logprob"],
                                                              abs=1e-4)
    # A rerun into a finished run generates nothing and keeps every prompt once.
    run_cli(args, cwd=tmp_path, check=True)
    assert [p["id"] for p in read_predictions(run_dir)] == ids
    assert read_json(run_dir / "benchmark.json")["num_requests"] == 0


def read_predictions_complete(path):
    """The complete lines of a predictions file that may end in a torn line."""
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines]


def test_resume_refuses_a_different_config(tiny, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    run_cli(tiny_args(tiny, "data.jsonl", out, "run_id=r1"), cwd=tmp_path, check=True)
    proc = run_cli(tiny_args(tiny, "data.jsonl", out, "run_id=r1", "sampling.max_tokens=4"),
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert "holds a run with another config" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_json(out / "default" / "r1" / "manifest.json")["status"] == "completed"
    assert len(run_dirs(out)) == 1
