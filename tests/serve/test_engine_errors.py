"""Failures inside the engine (issue 25 point 1): a request the engine fails on gets a 500 in
OpenAI's format naming the request id (a stream: an error event, then [DONE]); the other
requests and the server go on and /health stays green; only steps failing again and again
turn it red. Also /metrics' prefix-cache counters, present exactly when the engine's
get_stats() reports them. The engine is the real one, with add_request / step / get_stats
wrapped to fail or report on cue."""
from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.serve.conftest import ENGINE_KWARGS, MODEL_NAME, running_server

POISON = 7  # a prompt holding this token id makes add_request fail


@pytest.fixture(scope="module")
def faulty(tiny_model):
    from runner.engine import LLM

    llm = LLM(tiny_model, **ENGINE_KWARGS)
    engine = llm.llm_engine
    real_add, real_step, real_stats = engine.add_request, engine.step, engine.get_stats
    cues = {"step_failures": 0, "prefix": None}

    def add_request(request_id, prompt, params, **kw):
        if POISON in prompt.get("prompt_token_ids", []):
            raise RuntimeError("simulated fault in add_request")
        return real_add(request_id, prompt, params, **kw)

    def step():
        if cues["step_failures"] > 0:
            cues["step_failures"] -= 1
            raise RuntimeError("simulated fault in step")
        return real_step()

    def get_stats():
        stats = real_stats()
        if cues["prefix"] is None:  # an engine without the counters
            stats.pop("prefix_cache_queries", None)
            stats.pop("prefix_cache_hits", None)
        else:
            stats.update(prefix_cache_queries=cues["prefix"][0],
                         prefix_cache_hits=cues["prefix"][1])
        return stats

    engine.add_request, engine.step, engine.get_stats = add_request, step, get_stats
    with running_server(llm) as (base, srv):
        yield base, srv, cues


def _ok(base):
    r = httpx.post(base + "/v1/completions", json={"model": MODEL_NAME, "prompt": "Hello",
                                                   "max_tokens": 3}, timeout=30)
    assert r.status_code == 200, r.text
    assert httpx.get(base + "/health").status_code == 200


def test_add_request_failure_is_a_500_with_the_request_id(faulty):
    base, srv, _ = faulty
    r = httpx.post(base + "/v1/completions", json={"model": MODEL_NAME, "prompt": [5, POISON],
                                                   "max_tokens": 3},
                   headers={"x-request-id": "client-id-42"}, timeout=30)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == 500 and err["type"] == "InternalServerError"
    assert "client-id-42" in err["message"] and "simulated fault" in err["message"]
    assert r.headers["x-request-id"] == "client-id-42"
    _ok(base)


def test_step_failure_fails_the_running_requests_only(faulty):
    base, srv, cues = faulty
    results = {}

    def whole():
        results["whole"] = httpx.post(base + "/v1/completions", timeout=60, json={
            "model": MODEL_NAME, "prompt": "Once upon", "max_tokens": 40, "ignore_eos": True})

    def streamed():
        with httpx.stream("POST", base + "/v1/completions", timeout=60, json={
                "model": MODEL_NAME, "prompt": "The river", "max_tokens": 40,
                "ignore_eos": True, "stream": True}) as r:
            results["stream"] = [ln for ln in r.iter_lines() if ln.startswith("data: ")]

    cues["step_failures"] = 1
    threads = [threading.Thread(target=whole), threading.Thread(target=streamed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failed = 0
    r = results["whole"]
    if r.status_code == 500:
        failed += 1
        assert "engine failed on request cmpl-" in r.json()["error"]["message"]
    else:
        assert r.status_code == 200
    lines = results["stream"]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    if "error" in events[-1]:
        failed += 1
        assert events[-1]["error"]["code"] == 500
    assert failed >= 1  # the failed step had at least one of them running
    assert httpx.get(base + "/health").status_code == 200
    assert srv.async_engine.counters.step_failures >= 1
    _ok(base)


def test_health_turns_red_only_when_steps_keep_failing(faulty):
    base, srv, cues = faulty
    cues["step_failures"] = 10**6
    for _ in range(3):
        r = httpx.post(base + "/v1/completions", timeout=30, json={
            "model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2})
        assert r.status_code == 500
    assert httpx.get(base + "/health").status_code == 503
    cues["step_failures"] = 0
    r = httpx.post(base + "/v1/completions", timeout=30, json={
        "model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200
    assert httpx.get(base + "/health").status_code == 200


def _metric(text: str, name: str):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_prefix_cache_counters_only_when_the_engine_reports_them(faulty, server):
    import time

    base, _, cues = faulty
    plain_base, plain_srv = server
    # the engine's own counters (prefix caching is on by default) reach /metrics
    _ok(plain_base)
    deadline = time.time() + 5
    while time.time() < deadline:  # the gauges follow the engine's stats a moment later
        text = httpx.get(plain_base + "/metrics").text
        if (_metric(text, "vllm:prefix_cache_queries_total") or 0) > 0:
            break
        time.sleep(0.1)
    assert _metric(text, "vllm:prefix_cache_queries_total") > 0
    assert _metric(text, "vllm:prefix_cache_hits_total") is not None
    # an engine that does not report them gets no such lines
    text = httpx.get(base + "/metrics").text
    assert "vllm:prefix_cache_queries" not in text and "vllm:prefix_cache_hits" not in text
    cues["prefix"] = (1234, 567)
    _ok(base)
    deadline = time.time() + 5
    while time.time() < deadline:
        text = httpx.get(base + "/metrics").text
        if _metric(text, "vllm:prefix_cache_queries_total") is not None:
            break
        time.sleep(0.1)
    assert _metric(text, "vllm:prefix_cache_queries_total") == 1234
    assert _metric(text, "vllm:prefix_cache_hits_total") == 567
    assert "# TYPE vllm:prefix_cache_hits_total counter" in text
    cues["prefix"] = None
