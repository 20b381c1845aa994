"""SIGTERM and the grace period. `python -m runner.serve` as a subprocess: Hydra composition,
then SIGTERM while requests are in flight: each finishes whole or is refused cleanly (never a
truncated 200), the process exits 0, and the port stops answering. Past the grace period
(issue 28 point 6): the clients still waiting get a 503 in OpenAI's format, open streams an
error event and [DONE] (in-process with a slowed engine, and as a subprocess)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.serve.conftest import free_port, wait_healthy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_graceful_shutdown(tiny_model):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.serve", "model=local", f"model.model={tiny_model}",
         "engine=cpu_small", f"serve.port={port}", "serve.graceful_shutdown_timeout=20",
         "serve.log_level=warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=90, proc=proc)
        results: list = []

        def call(i):
            try:
                r = httpx.post(f"{base}/v1/completions", timeout=60, json={
                    "model": "local", "prompt": f"Hello {i}", "max_tokens": 64,
                    "ignore_eos": True, "temperature": 0})
                results.append(("ok", r.status_code, r.json()))
            except httpx.TransportError as exc:
                results.append(("refused", None, repr(exc)))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while time.time() < deadline:  # wait until the engine is decoding them
            text = httpx.get(f"{base}/metrics").text
            line = next(ln for ln in text.splitlines()
                        if ln.startswith("vllm:num_requests_unfinished"))
            if float(line.split()[-1]) > 0:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        rc = proc.wait(timeout=60)
        out = proc.stdout.read()
        assert rc == 0, out
        assert len(results) == 4
        finished = 0
        for kind, status, body in results:
            if kind == "ok":
                if status == 200:
                    assert body["choices"][0]["finish_reason"] == "length"
                    assert body["usage"]["completion_tokens"] == 64
                    finished += 1
                else:  # refused by the app while shutting down
                    assert status == 503 and body["error"]["code"] == 503
        assert finished >= 1, results
        assert "Traceback" not in out, out
        try:
            httpx.get(f"{base}/health", timeout=2)
            raise AssertionError("the server still answers after SIGTERM")
        except httpx.TransportError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stream_events(base, body, out, started):
    """POST a streaming completion; out gets every `data:` payload (or the transport error)."""
    try:
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True},
                          timeout=60) as r:
            out.append(("status", r.status_code))
            for line in r.iter_lines():
                if line.startswith("data: "):
                    started.set()
                    out.append(("data", line[6:]))
    except httpx.TransportError as exc:
        out.append(("error", repr(exc)))


def _check_refused(status, body) -> None:
    assert status == 503, (status, body)
    assert body["error"]["code"] == 503 and "shutting down" in body["error"]["message"]


def _check_stream_cut(events: list) -> bool:
    """A stream ends with [DONE]; if the grace period cut it, an error event with code 503
    comes right before (never a plain-text 500, never a cut connection). True if cut."""
    data = [payload for kind, payload in events if kind == "data"]
    assert ("status", 200) in events and data, events
    assert data[-1] == "[DONE]", events[-3:]
    last = json.loads(data[-2])
    if "error" not in last:
        return False
    assert last["error"]["code"] == 503 and last["error"]["type"] == "ServiceUnavailableError"
    return True


def test_past_the_grace_period_in_process(tiny_model):
    """uvicorn's shutdown path (what SIGTERM triggers) with a slowed engine: requests that
    outlive serve.graceful_shutdown_timeout end with 503s, and the server stops."""
    from runner.engine import LLM
    from tests.serve.conftest import ENGINE_KWARGS, MODEL_NAME, running_server

    llm = LLM(tiny_model, **ENGINE_KWARGS)
    real_step = llm.llm_engine.step

    def slow_step():
        time.sleep(0.05)
        return real_step()

    llm.llm_engine.step = slow_step
    body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 200, "ignore_eos": True}
    whole, events, started = [], [], threading.Event()
    with running_server(llm, graceful_shutdown_timeout=1.0) as (base, srv):
        def call():
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            whole.append(("ok", r.status_code, r.json()))

        threads = [threading.Thread(target=call),
                   threading.Thread(target=_stream_events, args=(base, body, events, started))]
        for t in threads:
            t.start()
        assert started.wait(20)
        t0 = time.perf_counter()
        srv.should_exit = True  # what uvicorn's SIGTERM handler does
        for t in threads:
            t.join(30)
        took = time.perf_counter() - t0
    (kind, status, answer), = whole
    _check_refused(status, answer)
    assert _check_stream_cut(events)
    assert took < 1.0 + 4.0, f"the 503s came {took:.1f}s after the shutdown began"


def test_sigterm_past_grace_period_subprocess(tiny_model):
    """SIGTERM on `python -m runner.serve` with a 0.5 s grace period and work that needs far
    longer: a 503 for the waiting client, an error event and [DONE] for the stream, exit 0."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.serve", "model=local", f"model.model={tiny_model}",
         "engine=cpu_small", f"serve.port={port}", "serve.graceful_shutdown_timeout=0.5",
         "serve.log_level=warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=90, proc=proc)
        # 9 requests x 8 sequences of 480 tokens on a 16-sequence CPU engine: seconds of work
        body = {"model": "local", "prompt": "Hello", "max_tokens": 480, "ignore_eos": True,
                "n": 8, "temperature": 1.0, "seed": 1}
        whole, events, started = [], [], threading.Event()

        def call():
            try:
                r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
                whole.append((r.status_code, r.json()))
            except httpx.TransportError as exc:
                whole.append((None, repr(exc)))

        # the stream goes first: queued behind 64 sequences it would start only when two of
        # the whole requests had finished (tens of seconds on a loaded CI machine)
        stream = threading.Thread(target=_stream_events, args=(base, body, events, started))
        stream.start()
        assert started.wait(60)
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the whole requests reach the server, some run, the rest wait
        threads.append(stream)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        rc = proc.wait(timeout=60)
        out = proc.stdout.read()
        assert rc == 0, out
        assert "Traceback" not in out, out
        refused = 0
        for status, answer in whole:  # finished whole, or a 503 in OpenAI's format
            if status == 200:
                assert answer["usage"]["completion_tokens"] == 8 * 480
            else:
                _check_refused(status, answer)
                refused += 1
        cut = _check_stream_cut(events)
        assert refused + cut >= 1, (whole, events[-2:])
        print(f"\npast the grace period: {refused} of 8 refused with 503, stream cut: {cut}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
