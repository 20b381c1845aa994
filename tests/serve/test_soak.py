"""Load and soak on loopback against `python -m runner.serve` (a subprocess, so its RSS is its
own), bounded in count and time (issue 25 point 3):

- 256 concurrent streaming clients through AsyncOpenAI, one in eight hanging up mid-stream:
  every other stream is complete and equals LLM.generate's greedy text, the hung-up ones are
  aborted, and afterwards nothing is left running and no KV block is held;
- SIGTERM during such a load: each stream finishes or ends with an error event and [DONE], a
  request sent after the signal is refused, the process exits 0;
- (slow) 2,000 requests: the server's RSS after them is within 10% of its RSS after 200.
The figures are printed (pytest -s) and recorded in docs/serve.md."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.serve.conftest import free_port, wait_healthy

psutil = pytest.importorskip("psutil")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENTS, MAX_TOKENS, LONG_TOKENS = 256, 8, 200


@contextlib.contextmanager
def serve_process(tiny_model, *extra):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.serve", "model=local", f"model.model={tiny_model}",
         "engine=cpu_small", "engine.max_num_seqs=64", "model.max_model_len=256",
         f"serve.port={port}", "serve.log_level=warning", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=120, proc=proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _prompt(i: int) -> str:
    return f"Question {i % 32}: who wrote the book about {i % 7} rivers?"


def _reference(llm, n: int) -> dict:
    from runner.engine import SamplingParams

    prompts = sorted({_prompt(i) for i in range(n)})
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
                        use_tqdm=False)
    return {p: o.outputs[0].text for p, o in zip(prompts, outs)}


async def _one_stream(client, i: int, hang_up: bool) -> tuple[str, str]:
    """(outcome, text): "done" (text complete), "hung_up", or "error:<code>"."""
    from openai import APIError

    stream = await client.completions.create(
        model="local", prompt=_prompt(i), temperature=0, stream=True,
        max_tokens=LONG_TOKENS if hang_up else MAX_TOKENS,
        extra_body={"ignore_eos": True} if hang_up else None)
    text = ""
    try:
        async for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            if hang_up:
                await stream.close()  # mid-stream: the server must abort it
                return "hung_up", text
    except APIError as exc:  # the error event of a stream cut by the shutdown
        return f"error:{getattr(exc, 'code', None) or exc}", text
    return "done", text


async def _wave(base: str, n: int, hang_up_every: int = 0, offset: int = 0):
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0,
                           timeout=180) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(_one_stream(client, offset + i, bool(hang_up_every) and i % hang_up_every == 0)
              for i in range(n)), return_exceptions=True)
        return results, time.perf_counter() - t0


def _gauge(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", timeout=30).text
    line = next(ln for ln in text.splitlines() if ln.startswith(name))
    return float(line.split()[-1])


def test_256_concurrent_streams_with_disconnects(tiny_model, reference_llm):
    want = _reference(reference_llm, CLIENTS)
    with serve_process(tiny_model) as (base, proc):
        results, elapsed = asyncio.run(_wave(base, CLIENTS, hang_up_every=8))
        hung = [i for i in range(CLIENTS) if i % 8 == 0]
        for i, r in enumerate(results):
            assert not isinstance(r, BaseException), (i, r)
            if i in hung:
                assert r[0] == "hung_up"
            else:
                assert r == ("done", want[_prompt(i)]), (i, r)
        deadline = time.time() + 30
        while time.time() < deadline and (_gauge(base, "vllm:num_requests_unfinished") or
                                          _gauge(base, "vllm:kv_cache_used_blocks")):
            time.sleep(0.2)
        assert _gauge(base, "vllm:num_requests_unfinished") == 0
        assert _gauge(base, "vllm:kv_cache_used_blocks") == 0
        assert _gauge(base, "vllm:request_aborted_total") >= len(hung) * 0.5
        assert httpx.get(base + "/health").status_code == 200
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    print(f"\n{CLIENTS} concurrent streams ({len(hung)} hung up mid-stream): {elapsed:.1f}s, "
          f"server RSS {rss:.0f} MiB")


def test_sigterm_during_load(tiny_model, reference_llm):
    want = _reference(reference_llm, CLIENTS)
    with serve_process(tiny_model, "serve.graceful_shutdown_timeout=30") as (base, proc):
        async def run():
            wave = asyncio.ensure_future(_wave(base, CLIENTS))
            while _gauge(base, "vllm:request_added_total") < CLIENTS // 4:
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            try:  # a new connection after the signal is not accepted
                async with httpx.AsyncClient() as c:
                    r = await c.post(base + "/v1/completions", timeout=5,
                                     json={"model": "local", "prompt": "x", "max_tokens": 2})
                late = f"answered {r.status_code}"
            except httpx.TransportError:
                late = "refused"
            return await wave, late

        (results, elapsed), late = asyncio.run(run())
        rc = proc.wait(timeout=90)
        out = proc.stdout.read()
    assert rc == 0 and "Traceback" not in out, out
    assert late == "refused" or late == "answered 503", late
    outcomes: dict = {}
    for i, r in enumerate(results):
        if isinstance(r, BaseException):  # not connected before the listener closed
            assert isinstance(r, Exception) and re.search(r"Connect|connection", repr(r)), r
            outcomes["not connected"] = outcomes.get("not connected", 0) + 1
            continue
        kind, text = r
        if kind == "done":
            assert text == want[_prompt(i)], (i, r)
        else:
            assert kind.startswith("error:"), r
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("done", 0) > 0
    print(f"\nSIGTERM during {CLIENTS} streams: {outcomes}, {elapsed:.1f}s")


@pytest.mark.slow
def test_rss_after_2000_requests_within_10_percent_of_200(tiny_model, reference_llm):
    want = _reference(reference_llm, 2000)
    with serve_process(tiny_model) as (base, proc):
        server = psutil.Process(proc.pid)
        done, rss, t0 = 0, {}, time.perf_counter()
        while done < 2000:
            results, _ = asyncio.run(_wave(base, 200, hang_up_every=10, offset=done))
            for i, r in enumerate(results):
                assert not isinstance(r, BaseException), r
                assert r[0] == ("hung_up" if i % 10 == 0 else "done")
                if r[0] == "done":
                    assert r[1] == want[_prompt(done + i)]
            done += 200
            rss[done] = server.memory_info().rss / 2**20
        elapsed = time.perf_counter() - t0
    growth = rss[2000] / rss[200] - 1
    print(f"\nRSS after 200 requests {rss[200]:.0f} MiB, after 2000 {rss[2000]:.0f} MiB "
          f"({growth:+.1%}); {2000 / elapsed:.0f} requests/s; "
          f"per wave: {[round(v) for v in rss.values()]}")
    assert growth <= 0.10, rss
