"""The OpenAI-compatible API against the tiny model, through the official `openai` client:
completions, chat, streaming, greedy equality with LLM.generate, bad requests, /metrics,
client disconnects, embeddings. Loopback only."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.serve.conftest import MODEL_NAME

PROMPTS = ["Hello world", "The quick brown fox", "Paris is the capital of"]


def _greedy(llm, prompts, max_tokens=12):
    from runner.engine import SamplingParams

    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens),
                        use_tqdm=False)
    return [o.outputs[0].text for o in outs]


def test_models_health_version(server, client):
    base, _ = server
    assert httpx.get(f"{base}/health").status_code == 200
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL_NAME


def test_completions_equal_generate(client, reference_llm):
    want = _greedy(reference_llm, PROMPTS)
    got = client.completions.create(model=MODEL_NAME, prompt=PROMPTS, max_tokens=12,
                                    temperature=0)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == want
    assert got.usage.completion_tokens > 0
    one = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=12,
                                    temperature=0, extra_body={"top_k": -1, "min_p": 0.0})
    assert one.choices[0].text == want[0]


def test_chat_equal_generate(client, reference_llm):
    tok = reference_llm.get_tokenizer()
    messages = [{"role": "user", "content": "Who wrote the book?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    want = _greedy(reference_llm, [{"prompt_token_ids": ids}])[0]
    got = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12,
                                         temperature=0)
    assert got.choices[0].message.content == want
    assert got.usage.prompt_tokens == len(ids)


def test_streaming_matches_whole_answer(client, reference_llm):
    want = _greedy(reference_llm, [PROMPTS[1]], max_tokens=16)[0]
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=16,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=10,
        temperature=0, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for ch in stream:
        usage = ch.usage or usage
        parts += [c.delta.content or "" for c in ch.choices]
    whole = client.chat.completions.create(model=MODEL_NAME, max_tokens=10, temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}])
    assert "".join(parts) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_vllm_extras_beam_and_logprobs(client):
    beam = client.completions.create(
        model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=6, temperature=0, n=2, best_of=3,
        extra_body={"use_beam_search": True, "length_penalty": 1.0, "early_stopping": False})
    assert len(beam.choices) == 2
    lp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=4,
                                   temperature=0, logprobs=2)
    assert len(lp.choices[0].logprobs.token_logprobs) == 4


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    ({"model": "no-such-model", "prompt": "x"}, 404, "model"),
    ({"model": MODEL_NAME, "prompt": "x", "use_beam_search": True, "best_of": 2,
      "temperature": 0.7}, 400, "temperature"),
    ({"model": MODEL_NAME, "prompt": "x", "use_beam_search": True, "best_of": 1,
      "temperature": 0}, 400, "best_of"),
    ({"model": MODEL_NAME, "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": MODEL_NAME, "prompt": "hello " * 400}, 400, "prompt"),
    ({"model": MODEL_NAME, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL_NAME}, 400, "prompt"),
])
def test_bad_requests(server, body, status, param):
    base, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{base}/v1/completions", content=content,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"]
    assert err["param"] == param
    assert httpx.get(f"{base}/health").status_code == 200


def test_bad_request_through_openai_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user",
                                                                    "content": "x"}],
                                       max_tokens=0)
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-nothing", prompt="x")


def _gauges(srv):
    return srv.async_engine.gauges, srv.async_engine.counters


def test_disconnect_mid_stream_frees_sequence(server):
    base, srv = server
    aborted_before = srv.async_engine.counters.requests_aborted
    body = {"model": MODEL_NAME, "prompt": "Once", "max_tokens": 200, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", f"{base}/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # one chunk, then hang up
    deadline = time.time() + 10
    while time.time() < deadline:
        gauges, counters = _gauges(srv)
        if counters.requests_aborted > aborted_before and \
                gauges.get("num_unfinished_requests") == 0 and \
                gauges.get("kv_cache_used_blocks") == 0:
            break
        time.sleep(0.05)
    gauges, counters = _gauges(srv)
    assert counters.requests_aborted > aborted_before
    assert gauges["num_unfinished_requests"] == 0 and gauges["kv_cache_used_blocks"] == 0
    assert httpx.get(f"{base}/health").status_code == 200


def test_metrics_prometheus(server, client):
    base, _ = server
    client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
    text = httpx.get(f"{base}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:request_success_total",
                 "http_requests_total"):
        assert f"# TYPE {name}" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("vllm:generation_tokens_total"))
    assert float(line.split()[-1]) > 0


def test_embeddings_generative_model_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL_NAME, input="hello")
    assert "generative" in str(e.value)


def test_embeddings_with_embedding_model(tmp_path):
    """A tiny random BERT served by its own server: /v1/embeddings equals LLM.encode."""
    import threading

    import torch
    from openai import OpenAI
    from transformers import BertConfig, BertModel

    from runner.engine import LLM
    from runner.serve import make_server
    from tests.serve.conftest import free_port, wait_healthy

    cfg = BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=96, max_position_embeddings=64,
                     initializer_range=0.2, architectures=["BertModel"])
    torch.manual_seed(0)
    BertModel(cfg).eval().save_pretrained(tmp_path)
    try:
        llm = LLM(str(tmp_path), skip_tokenizer_init=True)
        prompts = [[2, 5, 9, 11, 3], [2, 7, 3]]
        want = [o.outputs.embedding for o in
                llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)]
    except (NotImplementedError, TypeError, ValueError) as exc:
        pytest.skip(f"LLM.encode for embedding models is not available: {exc}")
    port = free_port()
    srv = make_server(llm, ["bert"], {}, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        with OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60) as client:
            got = client.embeddings.create(model="bert", input=prompts)  # base64 on the wire
            floats = client.embeddings.create(model="bert", input=prompts,
                                              encoding_format="float")
            for resp in (got, floats):
                for d, w in zip(sorted(resp.data, key=lambda d: d.index), want):
                    assert d.embedding == pytest.approx(list(w), abs=1e-6)
            with pytest.raises(openai.BadRequestError):
                client.completions.create(model="bert", prompt=[2, 5, 3], max_tokens=2)
    finally:
        srv.should_exit = True
        thread.join(15)
