"""Fuzzing the server from its own /openapi.json (schemathesis): every operation, positive and
negative data, bounded in examples and time, asserting no 5xx, no hang, documented status
codes, content types and response shapes. The document itself is checked against the app's
routes and the field tables. The nightly-size run is the `slow` one.

The fuzz server runs the tiny model with small limits (max_model_len 64, n <= 2, 4 prompts),
which the document states, so generated requests stay cheap on a CPU."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.serve.conftest import MODEL_NAME, running_server

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

FUZZ_ENGINE = dict(device="cpu", enforce_eager=True, max_num_seqs=16,
                   max_num_batched_tokens=512, max_model_len=64, dtype="float32")
FUZZ_LIMITS = dict(max_n=2, max_prompts_per_request=4, max_stop=4, max_stop_chars=16,
                   max_body_bytes=256 * 1024, enable_tokenizer_info_endpoint=True,
                   chat_template_timeout=2.0)
REQUEST_TIMEOUT_S = 30.0  # a request that takes longer than this is a hang


@pytest.fixture(scope="module")
def fuzz_server(tiny_model):
    from runner.engine import LLM

    llm = LLM(tiny_model, **FUZZ_ENGINE)
    with running_server(llm, defaults={"temperature": 0.0, "max_tokens": 4},
                        **FUZZ_LIMITS) as (base, srv):
        yield base, srv


def test_openapi_describes_every_route_and_field(fuzz_server):
    import jsonschema

    base, srv = fuzz_server
    doc = httpx.get(base + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    app_paths = {r.path for r in srv.config.app.routes}
    assert app_paths == set(doc["paths"])
    state = srv.config.app.state.server
    schemas = doc["components"]["schemas"]
    for table, name in (("completions", "CompletionRequest"), ("chat", "ChatCompletionRequest"),
                        ("embeddings", "EmbeddingRequest"), ("tokenize",
                                                             "TokenizeCompletionRequest"),
                        ("tokenize_chat", "TokenizeChatRequest"),
                        ("detokenize", "DetokenizeRequest")):
        props = schemas[name]["properties"]
        assert set(props) == set(state.tables[table]), name
        assert schemas[name]["additionalProperties"] is False
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)
    # the served limits are in the document
    cmpl = schemas["CompletionRequest"]["properties"]
    assert cmpl["n"]["anyOf"][0]["maximum"] == 2
    assert cmpl["max_tokens"]["anyOf"][0]["maximum"] == 64
    assert cmpl["temperature"]["anyOf"][0] == {"type": "number", "minimum": 0.0,
                                               "maximum": 2.0}


def _checks():
    from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                     response_schema_conformance, status_code_conformance)

    return [not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance]


def _fuzz(base: str, examples: int, budget_s: float) -> dict:
    """Every operation x {positive, negative}: `examples` cases each, within budget_s."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    deadline = time.monotonic() + budget_s
    counts: dict = {}
    slowest = [0.0]
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                break

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                response = case.call(base_url=base, timeout=REQUEST_TIMEOUT_S)
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
                case.validate_response(response, checks=_checks())
                key = (op.label, mode.value, response.status_code)
                counts[key] = counts.get(key, 0) + 1

            try:
                run()
            except Unsatisfiable:  # nothing to negate (a GET without parameters)
                counts[(op.label, mode.value, "none")] = 0
    counts["slowest_s"] = round(slowest[0], 2)
    return counts


def test_schemathesis_no_5xx_no_hang(fuzz_server):
    base, srv = fuzz_server
    counts = _fuzz(base, examples=30, budget_s=150)
    print("\nfuzz:", counts)
    statuses = {k[2] for k in counts if isinstance(k, tuple) and k[2] != "none"}
    assert statuses and max(statuses) < 500
    assert any(k[2] == 200 for k in counts if isinstance(k, tuple))  # it did real work too
    assert httpx.get(base + "/health").status_code == 200
    assert srv.async_engine.counters.requests_failed == 0


def test_documented_responses_of_explicit_cases(fuzz_server):
    """Cases random generation may miss: streams (each server-sent event against the
    document's itemSchema), echo with logprobs, prompt_logprobs, return_token_ids."""
    base, _ = fuzz_server
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    ops = {r.ok().label: r.ok() for r in schema.get_all_operations()}
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ("POST /v1/completions", {"prompt": "Hello", "stream": True,
                                  "stream_options": {"include_usage": True}, "logprobs": 1}),
        ("POST /v1/completions", {"prompt": ["Hello", "x"], "echo": True, "logprobs": 2,
                                  "max_tokens": 0}),
        ("POST /v1/completions", {"prompt": [[5, 6, 7]], "echo": True, "stream": True,
                                  "logprobs": 0, "return_token_ids": True}),
        ("POST /v1/completions", {"prompt": "Hello", "prompt_logprobs": 2,
                                  "return_token_ids": True}),
        ("POST /v1/chat/completions", {"messages": msgs, "stream": True, "logprobs": True,
                                       "top_logprobs": 2}),
        ("POST /v1/chat/completions", {"messages": msgs, "logprobs": True, "top_logprobs": 1,
                                       "prompt_logprobs": 1, "return_token_ids": True}),
        ("POST /tokenize", {"messages": msgs, "return_token_strs": True}),
    ]
    for label, body in cases:
        case = ops[label].Case(body={"model": MODEL_NAME, **body},
                               media_type="application/json")
        response = case.call(base_url=base, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, (label, body, response.text)
        case.validate_response(response, checks=_checks())


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_schemathesis_nightly(fuzz_server):
    base, srv = fuzz_server
    counts = _fuzz(base, examples=300, budget_s=1800)
    print("\nfuzz (nightly):", counts)
    assert max(k[2] for k in counts if isinstance(k, tuple) and k[2] != "none") < 500
    assert httpx.get(base + "/health").status_code == 200


def test_server_answers_model_field_for_every_path(fuzz_server):
    """Routes that take a model refuse an unknown one with 404 in OpenAI's shape."""
    base, _ = fuzz_server
    for path, body in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user",
                                                               "content": "x"}]}),
                       ("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
        r = httpx.post(base + path, json={**body, "model": "nope"}, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["param"] == "model", path
        r = httpx.post(base + path, json={**body, "model": MODEL_NAME}, timeout=30)
        assert r.status_code == 200, (path, r.text)
