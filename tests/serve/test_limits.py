"""Issue 28 points 5-7 and issue 25 point 1 as attacks on a live loopback server, bounded: cost
limits refused before any work (n / best_of, prompt bytes and tokens, prompts per request, body
size, JSON depth, lone surrogates), strict types and finite bounds for every field, a client's
chat template refused unless allowed (then rendered off the event loop with a time limit),
/metrics and /version behind the key, constant-time key comparison. Each attack must be
answered fast with a 4xx in OpenAI's error format naming the field, and the server must stay
healthy and quick for everybody else."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.serve.conftest import ENGINE_KWARGS, MODEL_NAME, running_server

KEY = "sk-test-0123456789"
FAST_S = 3.0  # an attack is answered within this, on a loaded 2-core machine


def _raw(base, content: bytes, path="/v1/completions", headers=None, timeout=30):
    h = {"content-type": "application/json", **(headers or {})}
    t0 = time.perf_counter()
    r = httpx.post(base + path, content=content, headers=h, timeout=timeout)
    return r, time.perf_counter() - t0


def _post(base, body, path="/v1/completions", headers=None, timeout=30):
    return _raw(base, json.dumps(body).encode(), path, headers, timeout)


def _assert_refused(r, elapsed, status=400, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    assert elapsed < FAST_S, f"refusal took {elapsed:.1f}s"


@pytest.mark.parametrize("body,param", [
    ({"n": 2_000_000, "seed": 1, "temperature": 1.0}, "n"),
    ({"best_of": 10**6, "temperature": 1.0}, "best_of"),
    ({"prompt": ["x"] * 5000}, "prompt"),
    ({"prompt": [[5, 6]] * 5000}, "prompt"),
    ({"prompt": list(range(5, 300)) * 20}, "prompt"),     # 5,900 token ids > max_model_len
    ({"prompt": "word " * 400_000}, "prompt"),            # 2 MB of text: never tokenized
    ({"stop": ["s"] * 10_000}, "stop"),
    ({"max_tokens": 10**9}, "max_tokens"),
    ({"logprobs": 10**6}, "logprobs"),
])
def test_cost_limits_refused_before_any_work(server, body, param):
    base, srv = server
    added = srv.async_engine.counters.requests_added
    r, elapsed = _post(base, {"model": MODEL_NAME, "prompt": "x", **body})
    _assert_refused(r, elapsed, 400, param)
    assert srv.async_engine.counters.requests_added == added  # nothing reached the engine
    assert httpx.get(base + "/health").status_code == 200


def test_body_size_limit_before_reading_it(server):
    base, _ = server
    big = b'{"model": "tiny", "prompt": "' + b"a" * (20 * 2**20) + b'"}'  # 20 MB > 16 MiB
    try:
        r, elapsed = _raw(base, big)
    except httpx.TransportError:  # the server may close before the client has sent it all
        pass
    else:
        _assert_refused(r, elapsed, 413)

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"a" * 2**19
        yield b'"}'
    try:
        r = httpx.post(base + "/v1/completions", content=chunks(), timeout=30)
        assert r.status_code == 413, r.text
    except httpx.TransportError:
        pass
    r, elapsed = _post(base, {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200


@pytest.mark.parametrize("path,key", [("/v1/completions", "prompt"),
                                      ("/v1/chat/completions", "messages")])
def test_deep_json_and_lone_surrogates_are_400(server, path, key):
    base, _ = server
    deep = b'{"model": "tiny", "%s": ' % key.encode() + b"[" * 1000 + b"]" * 1000 + b"}"
    r, elapsed = _raw(base, deep, path)
    _assert_refused(r, elapsed, 400)
    assert "nests" in r.json()["error"]["message"]
    value = b'"\\ud800 lone"' if key == "prompt" else \
        b'[{"role": "user", "content": "\\udfff"}]'
    r, elapsed = _raw(base, b'{"model": "tiny", "%s": %s}' % (key.encode(), value), path)
    _assert_refused(r, elapsed, 400, key)
    # a proper surrogate pair is text
    ok = b'"\\ud83d\\ude00"' if key == "prompt" else \
        b'[{"role": "user", "content": "\\ud83d\\ude00"}]'
    r, _ = _raw(base, b'{"model": "tiny", "max_tokens": 2, "%s": %s}' % (key.encode(), ok),
                path)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw,param", [
    (b'"temperature": Infinity', None), (b'"temperature": NaN', None),
    (b'"temperature": -Infinity', None), (b'"temperature": 1e400', None),
    (b'"temperature": 3.5', "temperature"), (b'"top_p": 0', "top_p"),
    (b'"return_token_ids": "false"', "return_token_ids"), (b'"echo": 1', "echo"),
    (b'"stream": "true"', "stream"), (b'"n": true', "n"), (b'"max_tokens": 1.5', "max_tokens"),
    (b'"logprobs": true', "logprobs"), (b'"seed": 1180591620717411303424', "seed"),
    (b'"stop": [""]', "stop"), (b'"stop": 5', "stop"), (b'"stop_token_ids": [-1]',
                                                       "stop_token_ids"),
    (b'"prompt": [1, 2.5]', "prompt"), (b'"prompt": [true]', "prompt"),
    (b'"prompt": []', "prompt"), (b'"prompt": [100000]', "prompt"),
    (b'"presence_penalty": 1e308', "presence_penalty"), (b'"top_k": -5', "top_k"),
    (b'"min_p": -0.1', "min_p"), (b'"stream_options": {"include_usage": "yes"}',
                                  "stream_options"),
    (b'"model": 5', "model"), (b'"user": ["a"]', "user"),
])
def test_strict_types_and_finite_bounds(server, raw, param):
    base, _ = server
    fields = {b"model": b'"tiny"', b"prompt": b'"x"'}
    name, _, value = raw.partition(b":")
    fields[name.strip().strip(b'"')] = value.strip()
    content = b"{" + b", ".join(b'"%s": %s' % kv for kv in fields.items()) + b"}"
    r, elapsed = _raw(base, content)
    _assert_refused(r, elapsed, 400, param)


def test_integral_floats_are_integers(server):
    base, _ = server
    r, _ = _post(base, {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2.0, "n": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_request_chat_template_refused_unless_allowed(server):
    base, _ = server
    msgs = [{"role": "user", "content": "hi"}]
    for extra in ({"chat_template": "{{ 'x' }}"},
                  {"chat_template_kwargs": {"chat_template": "{{ 'x' }}"}}):
        r, elapsed = _post(base, {"model": MODEL_NAME, "messages": msgs, **extra},
                           "/v1/chat/completions")
        _assert_refused(r, elapsed, 400, "chat_template")
    r, elapsed = _post(base, {"model": MODEL_NAME, "messages": msgs,
                              "chat_template_kwargs": {"tokenize": True}},
                       "/v1/chat/completions")
    _assert_refused(r, elapsed, 400, "chat_template_kwargs")


@pytest.fixture(scope="module")
def keyed(tiny_model):
    """A server with an api key and client chat templates allowed (1 s limit)."""
    from runner.engine import LLM

    llm = LLM(tiny_model, **ENGINE_KWARGS)
    with running_server(llm, api_key=KEY, allow_request_chat_template=True,
                        chat_template_timeout=1.0) as (base, srv):
        yield base, srv


AUTH = {"authorization": f"Bearer {KEY}"}


def test_allowed_chat_template_renders_off_the_loop_with_a_time_limit(keyed):
    import threading

    base, _ = keyed
    msgs = [{"role": "user", "content": "hi"}]
    r, _ = _post(base, {"model": MODEL_NAME, "messages": msgs, "max_tokens": 2,
                        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
                 "/v1/chat/completions", AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] >= 1
    # 10^10 loop steps: the sandbox's range limit does not stop loops nested in loops
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    result = {}

    def attack():
        result["r"] = _post(base, {"model": MODEL_NAME, "messages": msgs, "chat_template": slow},
                            "/v1/chat/completions", AUTH)

    t = threading.Thread(target=attack)
    t.start()
    time.sleep(0.3)
    worst = 0.0
    while t.is_alive():
        t0 = time.perf_counter()
        assert httpx.get(base + "/health", timeout=10).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.1)
    t.join()
    r, elapsed = result["r"]
    _assert_refused(r, elapsed, 400, "chat_template")
    assert "did not render within" in r.json()["error"]["message"]
    assert worst < 1.0, f"/health took {worst:.2f}s while the template rendered"
    # a template that allocates without bound is stopped by the memory limit or the clock
    big = "{{ 'x' * 10**11 }}"
    r, elapsed = _post(base, {"model": MODEL_NAME, "messages": msgs, "chat_template": big},
                       "/v1/chat/completions", AUTH)
    _assert_refused(r, elapsed, 400, "chat_template")


@pytest.mark.parametrize("path", ["/metrics", "/version", "/v1/models", "/openapi.json"])
def test_key_required_everywhere_but_health(keyed, path):
    base, _ = keyed
    assert httpx.get(base + "/health").status_code == 200
    r = httpx.get(base + path)
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    for bad in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", KEY, "Basic " + KEY, "Bearer -"):
        assert httpx.get(base + path, headers={"authorization": bad}).status_code == 401
    assert httpx.get(base + path, headers=AUTH).status_code == 200
    r, _ = _post(base, {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1})
    assert r.status_code == 401


def test_key_comparison_is_constant_time(monkeypatch):
    """Both sides are hashed to one length and compared with hmac.compare_digest (no early
    exit on the first wrong byte, no length leak)."""
    import hmac

    from runner.serve import state as st

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(st.hmac, "compare_digest", spy)
    digest = st.key_digest(KEY)
    assert st.key_matches(digest, f"Bearer {KEY}")
    assert not st.key_matches(digest, "Bearer x")
    assert not st.key_matches(digest, f"Bearer {KEY}{'y' * 1000}")
    assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)


def test_tokenize_text_is_bounded(server):
    """16 MB of text is ~20 s of tokenizing, which every prompt would wait for."""
    from runner.serve.config import ServeConfig

    base, _ = server
    limit = ServeConfig().max_tokenize_chars
    r, elapsed = _post(base, {"prompt": "a " * limit}, "/tokenize")
    _assert_refused(r, elapsed, 400, "prompt")
    r, _ = _post(base, {"prompt": "word " * 1000}, "/tokenize")
    assert r.status_code == 200 and r.json()["count"] >= 1000
