"""runner.remote_engine.RemoteLLM against the in-process server: the LLMEngine loop API and
generate() over /v1/completions give LLM.generate's greedy texts; refused requests fail
loudly."""
from __future__ import annotations

import pytest

from runner.remote_engine import RemoteLLM, RemoteRequestError, completions_url, request_body
from tests.serve.conftest import MODEL_NAME

PROMPTS = ["Hello world", "The river flows", "Numbers like 12"]


def test_request_body_sends_vllm_extras_only_when_set():
    from runner.engine import SamplingParams

    plain = request_body("m", "x", SamplingParams(temperature=0.5, max_tokens=4), True, False)
    assert "top_k" not in plain and "use_beam_search" not in plain
    beam = request_body("m", [1, 2], SamplingParams(use_beam_search=True, best_of=3,
                                                    temperature=0, max_tokens=4), False, True)
    assert beam["use_beam_search"] is True and beam["best_of"] == 3
    assert beam["return_token_ids"] is True and beam["prompt"] == [1, 2]
    assert completions_url("http://h:1/v1") == "http://h:1/v1/completions"
    assert completions_url("http://h:1") == "http://h:1/v1/completions"


@pytest.mark.parametrize("return_token_ids", [False, True])
def test_remote_generate_equals_local(server, reference_llm, tiny_model, return_token_ids):
    from runner.engine import SamplingParams

    base, _ = server
    params = SamplingParams(temperature=0, max_tokens=10)
    want = reference_llm.generate(PROMPTS, params, use_tqdm=False)
    llm = RemoteLLM(base + "/v1", MODEL_NAME, tokenizer=tiny_model, max_concurrency=4,
                    return_token_ids=return_token_ids)
    got = llm.generate(PROMPTS, params)
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in want]
    if return_token_ids:
        assert [o.outputs[0].token_ids for o in got] == [list(o.outputs[0].token_ids)
                                                         for o in want]
    for o in got:
        assert o.finished and o.metrics.finished_time >= o.metrics.arrival_time
        assert o.prompt_token_ids
    stats = llm.llm_engine.get_stats()
    assert stats["num_requests"] == len(PROMPTS)
    llm.llm_engine.close()


def test_remote_engine_loop_api_and_errors(server, tiny_model):
    from runner.engine import SamplingParams

    base, _ = server
    llm = RemoteLLM(base, MODEL_NAME, tokenizer=tiny_model, max_retries=0)
    engine = llm.llm_engine
    tok = llm.get_tokenizer()
    engine.add_request("a", {"prompt_token_ids": tok.encode("Hello")},
                       SamplingParams(temperature=0, max_tokens=3))
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.request_id for o in outs] == ["a"] and outs[0].outputs[0].finish_reason
    engine.add_request("b", "x " * 400, SamplingParams(max_tokens=3))
    with pytest.raises(RemoteRequestError, match="400"):
        while engine.has_unfinished_requests():
            engine.step()
    engine.close()
