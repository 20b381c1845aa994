"""Fixtures of the serve tests: one in-process server on a free 127.0.0.1 port, over the tiny
random llama, shared by the module tests; a reference LLM for expected greedy outputs."""
from __future__ import annotations

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
    from runner.serve import make_server

    llm = LLM(tiny_model, **ENGINE_KWARGS)
    port = free_port()
    defaults = {"temperature": 0.0, "max_tokens": 16}
    srv = make_server(llm, [MODEL_NAME, tiny_model], defaults, host="127.0.0.1", port=port,
                      graceful_shutdown_timeout=5, log_level="warning",
                      enable_tokenizer_info_endpoint=True)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    yield base, srv
    srv.should_exit = True
    thread.join(15)


@pytest.fixture()
def client(server):
    from openai import OpenAI

    base, _ = server
    with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c
