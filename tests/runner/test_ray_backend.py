"""Data-parallel runs on a real, local Ray: two CPU replicas of a tiny model (float32, greedy).

One Ray instance serves the module (ray.init(num_cpus=2, no dashboard); ray.shutdown in the
fixture's teardown ends every process it started). The reference is the same run on the plain
local backend, one engine in this process (its tokens equal HF transformers', tests/engine):
  - two replicas give the same predictions, each item exactly once, and benchmark.json /
    manifest.json carry the throughput and the per-replica numbers;
  - a replica killed mid-run (ray.kill) has its in-flight items run on the other: every item
    exactly once, the same predictions, the failure in run.log and manifest.json;
  - a driver killed mid-run (SIGKILL of `python -m runner`) resumes item-exactly (slow);
  - more GPUs than Ray sees is one line before any replica starts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import cli
from runner.backends.ray_cluster import ClusterError
from runner.run import run
from tests.e2e.helpers import (REPO_ROOT, read_json, read_predictions, run_cli, runner_env,
                               tiny_args, write_jsonl)

ray = pytest.importorskip("ray")

N_ITEMS = 16


@pytest.fixture(scope="module")
def local_ray():
    # the replicas are new processes: they import this checkout's runner, as the test does
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), saved]))
    try:
        ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dp_data") / "data.jsonl", N_ITEMS)


def _argv(model, data, out, *extra):
    return [*tiny_args(model, data, out), "engine=cpu_small", "model.dtype=float32",
            "sampling=greedy", "cpu_threads=1", *extra]


def _run(argv):
    return run(cli.to_run_config(cli.compose(argv)))


@pytest.fixture(scope="module")
def reference(tiny_llama, data, tmp_path_factory):
    """{id: record} of one local engine on the same items (and its config hash)."""
    out = tmp_path_factory.mktemp("dp_ref")
    result = _run(_argv(tiny_llama, data, out))
    records = {r["id"]: r for r in read_predictions(result.run_dir)}
    return {"records": records,
            "config_hash": read_json(Path(result.run_dir) / "manifest.json")["config_hash"]}


def _same_predictions(records, reference):
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == len(reference["records"]), "every item exactly once"
    for r in records:
        ref = reference["records"][r["id"]]
        assert r["prediction"] == ref["prediction"], r["id"]
        assert r["outputs"][0]["token_ids"] == ref["outputs"][0]["token_ids"], r["id"]
        assert r["outputs"][0]["cumulative_logprob"] == pytest.approx(
            ref["outputs"][0]["cumulative_logprob"], abs=1e-4)


def test_two_replicas_give_the_predictions_of_one(local_ray, tiny_llama, data, reference,
                                                 tmp_path):
    result = _run(_argv(tiny_llama, data, tmp_path, "engine.data_parallel_size=2"))
    assert result.status == "completed"
    run_dir = Path(result.run_dir)
    _same_predictions(read_predictions(run_dir), reference)
    bench = read_json(run_dir / "benchmark.json")
    assert bench["num_requests"] == N_ITEMS and bench["throughput"]["output_tokens_per_s"] > 0
    dp = bench["engine_stats"]["data_parallel"]
    assert dp["size"] == 2 and dp["alive"] == 2 and dp["failures"] == []
    per_replica = [r["requests"] for r in dp["replicas"]]
    assert sum(per_replica) == N_ITEMS and min(per_replica) > 0  # both did work
    assert bench["engine_stats"]["num_generation_tokens"] == bench["output_tokens"]
    assert all(r["output_tokens_per_busy_s"] > 0 for r in dp["replicas"])
    manifest = read_json(run_dir / "manifest.json")
    backend = manifest["backend"]
    assert backend["kind"] == "ray" and backend["data_parallel_size"] == 2
    assert backend["engine_args"]["data_parallel_size"] == 2
    assert len({r["pid"] for r in backend["replicas"]}) == 2
    assert backend["replica_resources"] == {"device": "cpu", "num_gpus": 0, "num_cpus": 1.0,
                                            "cpu_threads": 1}
    # where the engine runs is not what it computes: the config hash of the one-engine run
    assert manifest["config_hash"] == reference["config_hash"]


def test_a_killed_replicas_items_run_exactly_once_on_the_other(local_ray, tiny_llama, data,
                                                               reference, tmp_path,
                                                               monkeypatch):
    from runner.backends.ray import RayBackend

    original = RayBackend.results
    seen = {}

    def results_then_kill(self):
        outs = original(self)
        if "held" not in seen:
            seen["held"] = self._queue.held(1)  # what replica 1 holds as it dies
            ray.kill(self._actors[1])
        return outs

    monkeypatch.setattr(RayBackend, "results", results_then_kill)
    result = _run(_argv(tiny_llama, data, tmp_path, "engine.data_parallel_size=2",
                        "distributed.replica_queue_size=2", "distributed.replica_call_s=0.01"))
    assert result.status == "completed" and seen["held"] > 0
    run_dir = Path(result.run_dir)
    _same_predictions(read_predictions(run_dir), reference)
    manifest = read_json(run_dir / "manifest.json")
    failures = manifest["backend"]["failures"]
    assert len(failures) == 1 and failures[0]["replica"] == 1
    # what it held then, less what its calls already finished (their results are kept), plus
    # what it was handed until the driver saw it dead: at least one request moved
    assert failures[0]["requeued_requests"] >= 1
    assert "ActorDiedError" in failures[0]["error"]
    assert [r["status"] for r in manifest["backend"]["replicas"]] == ["alive", "failed"]
    log = (run_dir / "run.log").read_text()
    assert "replica 1 (host" in log and "go back to the queue" in log
    bench = read_json(run_dir / "benchmark.json")
    assert bench["engine_stats"]["data_parallel"]["failures"] == failures


def test_more_gpus_than_ray_sees_is_one_line_before_any_replica(local_ray, tiny_llama, data,
                                                                tmp_path):
    with pytest.raises(ClusterError) as e:
        _run(_argv(tiny_llama, data, tmp_path, "engine.device=cuda",
                   "engine.data_parallel_size=2"))
    assert str(e.value).startswith("engine.data_parallel_size=2 needs 2 GPUs; Ray ")
    assert "sees 0 GPUs" in str(e.value) and "\n" not in str(e.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_killed_driver_resumes_item_exactly(local_ray, tiny_llama, data, reference,
                                              tmp_path):
    out = tmp_path / "out"
    argv = _argv(tiny_llama, data, out, "engine.data_parallel_size=2", "run_id=dp",
                 f"distributed.ray_address={local_ray}", "distributed.replica_queue_size=1",
                 "distributed.replica_call_s=0.01")
    proc = subprocess.Popen([sys.executable, "-m", "runner", *argv], cwd=tmp_path,
                            env=runner_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    preds = out / "default" / "dp" / "predictions.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if preds.is_file() and preds.read_text().count("\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done_before = [json.loads(line)["id"] for line in preds.read_text().splitlines()
                   if line.strip()]
    assert 2 <= len(done_before) < N_ITEMS
    assert read_json(out / "default" / "dp" / "manifest.json")["status"] == "running"
    # the replicas' owner is gone: Ray ends them; resume on one engine (same config hash)
    resumed = run_cli([*_argv(tiny_llama, data, out), "run_id=dp"], cwd=tmp_path, check=True)
    assert "already in predictions.jsonl" in (out / "default" / "dp" / "run.log").read_text()
    records = read_predictions(out / "default" / "dp")
    assert [r["id"] for r in records][:len(done_before)] == done_before  # kept, not redone
    _same_predictions(records, reference)
    manifest = read_json(out / "default" / "dp" / "manifest.json")
    assert manifest["status"] == "completed"
    assert [s["status"] for s in manifest["sessions"]] == ["killed", "completed"]
    assert manifest["sessions"][1]["resumed_items"] == len(done_before)
    assert resumed.returncode == 0
