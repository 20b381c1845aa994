"""`python -m runner.serve` as a subprocess: Hydra composition, then SIGTERM while requests
are in flight. Each in-flight request either finishes whole or is refused cleanly (never a
truncated 200), the process exits 0, and the port stops answering."""
from __future__ import annotations

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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
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
