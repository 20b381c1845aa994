"""Fixtures of the serve tests: one in-process server on a free 127.0.0.1 port, over the tiny
random llama, shared by the module tests; a reference LLM for expected greedy outputs;
`running_server` for tests that need a server of their own (other limits, a key, a faulty
engine)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

ENGINE_KWARGS = dict(device="cpu", enforce_eager=True, max_num_seqs=64,
                     max_num_batched_tokens=2048, max_model_len=256, dtype="float32")
MODEL_NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout: float = 60.0, proc=None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} not healthy after {timeout}s")


@contextlib.contextmanager
def running_server(llm, names=(MODEL_NAME,), defaults=None, **overrides):
    """(base URL, uvicorn server) of a server over `llm` on a free loopback port; `overrides`
    are ServeConfig fields. Stopped (uvicorn's shutdown path, as on SIGTERM) on exit."""
    from runner.serve import make_server

    port = free_port()
    srv = make_server(llm, list(names), defaults or {"temperature": 0.0, "max_tokens": 16},
                      host="127.0.0.1", port=port, log_level="warning",
                      **{"graceful_shutdown_timeout": 5, **overrides})
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        yield base, srv
    finally:
        srv.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory):
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def reference_llm(tiny_model):
    from runner.engine import LLM

    return LLM(tiny_model, **ENGINE_KWARGS)


@pytest.fixture(scope="session")
def server(tiny_model):
    """(base URL, uvicorn server) of a live server; stopped at the end of the session."""
    from runner.engine import LLM

    llm = LLM(tiny_model, **ENGINE_KWARGS)
    with running_server(llm, [MODEL_NAME, tiny_model],
                        enable_tokenizer_info_endpoint=True) as (base, srv):
        yield base, srv


@pytest.fixture()
def client(server):
    from openai import OpenAI

    base, _ = server
    with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c
