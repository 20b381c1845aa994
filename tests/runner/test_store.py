"""The output folder pieces: atomic writes, the predictions journal and its repair on resume,
benchmark statistics (against numpy) and the sweep summary (CSV, Markdown, PNG)."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from runner import store
from runner.benchmark import BenchmarkRecorder, percentile, summarize
from runner.summary import swept_keys, write_summary


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    store.atomic_write_json(target, {"a": 1})
    store.atomic_write_json(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "manifest.json"
    store.atomic_write_json(target, {"status": "running"})

    class Boom:
        pass

    with pytest.raises(TypeError):
        # json.dumps fails before anything is written: the old file must survive untouched.
        store.atomic_write_text(target, json.dumps({"x": Boom()}))
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def _rec(i):
    return {"id": f"q{i}", "prediction": f"answer {i}", "outputs": [{"text": f"answer {i}"}]}


def test_prediction_log_appends_and_reloads(tmp_path):
    path = tmp_path / store.PREDICTIONS
    with store.PredictionLog(path) as log:
        for i in range(3):
            log.append(_rec(i))
        with pytest.raises(ValueError, match="already"):
            log.append(_rec(1))
    with store.PredictionLog(path) as log:
        assert log.done_ids == {"q0", "q1", "q2"}
        assert [r["id"] for r in log.records] == ["q0", "q1", "q2"]
        log.append(_rec(3))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [
        "q0", "q1", "q2", "q3"]


def test_truncated_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / store.PREDICTIONS
    good = "".join(json.dumps(_rec(i)) + "\n" for i in range(2))
    torn = json.dumps(_rec(2))[:17]  # the writer died mid-line
    path.write_text(good + torn)
    with store.PredictionLog(path) as log:
        assert log.done_ids == {"q0", "q1"}
        assert log.dropped_bytes == len(torn)
        log.append(_rec(2))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q0", "q1", "q2"]


def test_unparseable_complete_last_line_is_dropped_too(tmp_path):
    path = tmp_path / store.PREDICTIONS
    path.write_text(json.dumps(_rec(0)) + "\n" + '{"id": "q1", "pred\n')
    with store.PredictionLog(path) as log:
        assert log.done_ids == {"q0"}
    assert path.read_text() == json.dumps(_rec(0)) + "\n"


def test_corruption_in_the_middle_is_refused(tmp_path):
    path = tmp_path / store.PREDICTIONS
    path.write_text(json.dumps(_rec(0)) + "\nnot json\n" + json.dumps(_rec(1)) + "\n")
    with pytest.raises(ValueError, match="corrupted"):
        store.PredictionLog(path).open()


def test_duplicate_ids_keep_the_first(tmp_path):
    path = tmp_path / store.PREDICTIONS
    first, second = _rec(0), {**_rec(0), "prediction": "other"}
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    with store.PredictionLog(path) as log:
        assert log.duplicates == 1
        assert log.records == [first]


# ---------------------------------------------------------------------------------------------
# benchmark


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentiles_match_numpy(n):
    rng = np.random.default_rng(n)
    xs = list(rng.exponential(size=n))
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)
    s = summarize(xs)
    assert s["mean"] == pytest.approx(float(np.mean(xs)))
    assert s["count"] == n


def _out(arrival, first, finish, n_prompt, n_out):
    metrics = SimpleNamespace(arrival_time=arrival, first_token_time=first, finished_time=finish,
                              last_token_time=finish, time_in_queue=0.01,
                              first_scheduled_time=arrival + 0.01)
    return SimpleNamespace(prompt_token_ids=list(range(n_prompt)), metrics=metrics,
                           outputs=[SimpleNamespace(token_ids=list(range(n_out)))])


def test_benchmark_latencies_from_request_metrics():
    rec = BenchmarkRecorder()
    rec.add(_out(100.0, 100.5, 102.5, 10, 5))  # ttft 0.5, e2e 2.5, tpot 2.0/4 = 0.5
    rec.add(_out(100.0, 101.0, 101.0, 6, 1))  # one token: no tpot
    rec.add(_out(101.0, 101.2, 104.0, 4, 8))  # ttft 0.2, e2e 3.0, tpot 2.8/7 = 0.4
    b = rec.finish(engine_stats={"num_preemptions": 0}, device="cpu", resumed=2)
    assert b["num_requests"] == 3 and b["num_resumed"] == 2
    assert b["prompt_tokens"] == 20 and b["output_tokens"] == 14
    assert b["wall_time_s"] == pytest.approx(4.0)
    assert b["throughput"]["output_tokens_per_s"] == pytest.approx(14 / 4.0)
    assert b["latency_s"]["ttft"]["p50"] == pytest.approx(0.5)
    assert b["latency_s"]["tpot"]["count"] == 2
    assert b["latency_s"]["tpot"]["mean"] == pytest.approx((0.5 + 0.4) / 2)
    assert b["latency_s"]["e2e"]["max"] == pytest.approx(3.0)
    assert b["memory"]["kind"] == "rss" and b["memory"]["rss_peak_bytes"] > 10 * 2**20
    assert b["engine_stats"] == {"num_preemptions": 0}


# ---------------------------------------------------------------------------------------------
# sweep summary


def _fake_job(sweep, num, temperature, f1, status="completed"):
    d = sweep / str(num)
    d.mkdir(parents=True)
    store.atomic_write_json(d / "manifest.json", {
        "status": status,
        "overrides": ["model=local", "sampling=random", f"sampling.temperature={temperature}"]})
    if status == "completed":
        store.atomic_write_json(d / "metrics.json", {"scores": {"exact_match": f1 / 2, "f1": f1},
                                                     "num_items": 10})
        store.atomic_write_json(d / "benchmark.json", {
            "throughput": {"output_tokens_per_s": 12.5},
            "latency_s": {"e2e": {"p50": 0.3}, "ttft": {"p50": 0.1}}})


def test_summary_table_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (t, f1) in enumerate([(0.2, 40.0), (0.7, 30.0), (1.0, 20.0)]):
        _fake_job(sweep, num, t, f1)
    _fake_job(sweep, 3, 1.5, 0.0, status="failed")
    out = write_summary(sweep)
    assert out["swept"] == ["sampling.temperature"]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["sampling.temperature"] for r in rows] == ["0.2", "0.7", "1.0", "1.5"]
    assert [r["f1"] for r in rows] == ["40.0", "30.0", "20.0", ""]
    assert rows[3]["status"] == "failed"
    md = (sweep / "summary.md").read_text()
    assert "| job | sampling.temperature | status | exact_match | f1 |" in md
    assert md.count("\n| ") == 5  # header + 4 jobs
    png = (sweep / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_job_left_running_by_a_dead_process_is_killed(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_job(sweep, 0, 0.2, 10.0)
    _fake_job(sweep, 1, 0.7, 0.0, status="running")  # kill -9: no process holds its folder
    assert [j["status"] for j in write_summary(sweep)["jobs"]] == ["completed", "killed"]


def test_swept_keys_ignore_constant_overrides():
    jobs = [{"overrides": {"a": "1", "b": "x"}}, {"overrides": {"a": "2", "b": "x"}}]
    assert swept_keys(jobs) == ["a"]
    assert swept_keys([{"overrides": {"a": "1"}}]) == []
