"""The remote backend (runner/backends/remote.py) against the in-process server (runner.serve) and
against a scripted vLLM-format endpoint: the Backend protocol gives LLM.generate's greedy texts,
refused requests fail loudly, prompt logprobs come back in the engine's format, and a wrong URL
fails before anything runs."""
from __future__ import annotations

import json

import pytest

from runner.backends.remote import (RemoteBackend, RemoteRequestError, completions_url,
                                    parse_prompt_logprobs, request_body)
from runner.tasks.api import Request
from tests.serve.conftest import (MODEL_NAME, free_port, reference_llm, server,  # noqa: F401
                                  tiny_model)

PROMPTS = ["Hello world", "The river flows", "Numbers like 12"]


def _drain(backend, requests: dict) -> dict:
    for rid, request in requests.items():
        backend.submit(rid, request)
    got = {}
    while len(got) < len(requests):
        for out in backend.results():
            got[out.request_id] = out
    return got


def test_request_body_sends_vllm_extras_only_when_set():
    from runner.engine import SamplingParams

    plain = request_body("m", "x", SamplingParams(temperature=0.5, max_tokens=4), True, False)
    assert "top_k" not in plain and "use_beam_search" not in plain
    beam = request_body("m", [1, 2], SamplingParams(use_beam_search=True, best_of=3,
                                                    temperature=0, max_tokens=4), False, True)
    assert beam["use_beam_search"] is True and beam["best_of"] == 3
    assert beam["return_token_ids"] is True and beam["prompt"] == [1, 2]
    lps = request_body("m", [1, 2], SamplingParams(max_tokens=1, prompt_logprobs=1), False, True)
    assert lps["prompt_logprobs"] == 1
    assert completions_url("http://h:1/v1") == "http://h:1/v1/completions"
    assert completions_url("http://h:1") == "http://h:1/v1/completions"


@pytest.mark.parametrize("return_token_ids", [False, True])
@pytest.mark.parametrize("remote_prompt", ["token_ids", "text"])
def test_remote_results_equal_local(server, reference_llm, tiny_model, return_token_ids,
                                    remote_prompt):
    from runner.backends.remote import load_tokenizer
    from runner.engine import SamplingParams

    base, _ = server
    params = SamplingParams(temperature=0, max_tokens=10)
    want = reference_llm.generate(PROMPTS, params, use_tqdm=False)
    tok = load_tokenizer(tiny_model)
    backend = RemoteBackend(base + "/v1", MODEL_NAME, tokenizer=tok, max_concurrency=4,
                            return_token_ids=return_token_ids, remote_prompt=remote_prompt)
    try:
        got = _drain(backend, {str(i): Request(prompt_token_ids=tok(p).input_ids, params=params,
                                               prompt=p) for i, p in enumerate(PROMPTS)})
        texts = [got[str(i)].outputs[0].text for i in range(len(PROMPTS))]
        assert texts == [o.outputs[0].text for o in want]
        if return_token_ids:
            assert [got[str(i)].outputs[0].token_ids for i in range(len(PROMPTS))] == \
                [list(o.outputs[0].token_ids) for o in want]
        for o in got.values():
            assert o.finished and o.metrics.finished_time >= o.metrics.arrival_time
            assert o.prompt_token_ids
        assert backend.stats()["num_requests"] == len(PROMPTS)
        with pytest.raises(RuntimeError, match="no request in flight"):
            backend.results()
    finally:
        backend.close()


def test_remote_backend_errors(server, tiny_model):
    from runner.backends.remote import load_tokenizer
    from runner.engine import SamplingParams

    base, _ = server
    tok = load_tokenizer(tiny_model)
    backend = RemoteBackend(base, MODEL_NAME, tokenizer=tok, max_retries=0)
    try:
        out = _drain(backend, {"a": Request(tok.encode("Hello"),
                                            SamplingParams(temperature=0, max_tokens=3))})
        assert out["a"].outputs[0].finish_reason
        backend.submit("b", Request(tok.encode("x " * 400), SamplingParams(max_tokens=3)))
        with pytest.raises(RemoteRequestError, match="400"):
            while True:
                backend.results()
    finally:
        backend.close()


def test_unreachable_url_fails_at_connect():
    backend = RemoteBackend(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=0)
    try:
        with pytest.raises(RemoteRequestError, match="cannot connect"):
            backend.connect()
    finally:
        backend.close()


# vLLM 0.24's /v1/completions answer to a request with prompt_logprobs (one choice; the first
# prompt position has no logprob; keys are token ids as strings, as JSON has them).
VLLM_ANSWER = {
    "id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": "length",
                 "stop_reason": None, "token_ids": [7],
                 "prompt_logprobs": [None,
                                     {"5": {"logprob": -1.25, "rank": 3, "decoded_token": "b"},
                                      "9": {"logprob": -0.5, "rank": 1, "decoded_token": "z"}},
                                     {"6": {"logprob": -2.0, "rank": 2, "decoded_token": "c"}}],
                 "prompt_token_ids": [4, 5, 6]}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def test_prompt_logprobs_in_vllms_format():
    import httpx

    from runner.engine import SamplingParams
    from runner.engine.outputs import Logprob

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        return httpx.Response(200, json=VLLM_ANSWER)

    backend = RemoteBackend("http://vllm.test/v1", "m", transport=httpx.MockTransport(handler))
    try:
        params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
        out = _drain(backend, {"r": Request([4, 5, 6], params)})["r"]
    finally:
        backend.close()
    body = seen[0]
    assert body["prompt"] == [4, 5, 6] and body["prompt_logprobs"] == 1
    assert body["stream"] is False  # vLLM has no streamed prompt logprobs
    assert out.prompt_logprobs[0] is None
    assert out.prompt_logprobs[1] == {5: Logprob(-1.25, 3, "b"), 9: Logprob(-0.5, 1, "z")}
    assert out.prompt_logprobs[2][6].logprob == -2.0
    assert out.prompt_token_ids == [4, 5, 6] and out.outputs[0].token_ids == [7]
    assert parse_prompt_logprobs(None) is None


def test_a_server_without_prompt_logprobs_is_named():
    import httpx

    from runner.engine import SamplingParams

    answer = json.loads(json.dumps(VLLM_ANSWER))
    del answer["choices"][0]["prompt_logprobs"]
    backend = RemoteBackend("http://hosted.test/v1", "m", max_retries=0,
                            transport=httpx.MockTransport(lambda r: httpx.Response(200,
                                                                                   json=answer)))
    try:
        backend.submit("r", Request([4, 5, 6], SamplingParams(max_tokens=1, prompt_logprobs=0)))
        with pytest.raises(RemoteRequestError, match="returned no prompt_logprobs"):
            while True:
                backend.results()
    finally:
        backend.close()


def test_request_body_sends_vllm_0_24_fields():
    from runner.engine import SamplingParams
    from runner.engine.sampling_params import StructuredOutputsParams

    p = SamplingParams(temperature=0.5, max_tokens=4, top_k=-1, logit_bias={5: 2.0},
                       allowed_token_ids=[5, 6], bad_words=["no"],
                       structured_outputs=StructuredOutputsParams(choice=["a", "b"]))
    body = request_body("m", "x", p, True, False)
    assert "top_k" not in body                         # -1 and 0 both mean disabled
    assert body["logit_bias"] == {"5": 2.0} and body["allowed_token_ids"] == [5, 6]
    assert body["bad_words"] == ["no"]
    assert body["structured_outputs"] == {"choice": ["a", "b"]}
