"""The echo format over plain HTTP, pinned against HF transformers on the tiny model: with
`echo: true` and `logprobs`, a choice holds the prompt's tokens (token_logprobs null for the
first), top_logprobs and text_offset before the completion's, for text and token-id prompts and
lists of prompts; `max_tokens: 0` returns the prompt part alone; `prompt_logprobs` comes back in
vLLM's format. Also /tokenize, /detokenize (and lm-eval's remote tokenizer over them) and
/v1/models' max_model_len."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.conftest import MODEL_NAME

ATOL = 1e-4


@pytest.fixture(scope="module")
def hf(tiny_model):
    """(tokenizer, scorer): scorer(ids) -> per position j >= 1 the logprob of ids[j], its rank
    (1 + tokens scored higher) and the best token with its logprob, from HF's forward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def score(ids, k=3):
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        rows = []
        for j in range(1, len(ids)):
            row = lsm[j - 1]
            lp = float(row[ids[j]])
            top = [(int(t), float(row[t])) for t in row.topk(k).indices]
            rows.append((lp, int((row > row[ids[j]]).sum()) + 1, top[0][0], top[0][1], top))
        return rows

    def greedy(ids, n):
        ids = list(ids)
        for _ in range(n):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[-n:]

    return tok, score, greedy


def _post(base, body, path="/v1/completions"):
    r = httpx.post(base + path, json=body, timeout=60)
    return r.status_code, r.json()


def _check_prompt_part(lp, ids, tok, score, num_top=1):
    """logprobs' first len(ids) entries describe the prompt as HF scores it."""
    want = score(ids)
    n = len(ids)
    assert lp["tokens"][:n] == [tok.decode([i]) for i in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for j in range(1, n):
        p, _, _, _, top = want[j - 1]
        assert lp["token_logprobs"][j] == pytest.approx(p, abs=ATOL)
        # the token itself, then the best num_top others, keyed by their text (vLLM: tokens
        # that decode alike share a key, the later one wins)
        entries = [(ids[j], p)] + [(t, v) for t, v in top[:num_top] if t != ids[j]]
        expected = {tok.decode([t]): v for t, v in entries[:num_top + 1]}
        got = lp["top_logprobs"][j]
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=ATOL)
    offsets, pos = [], 0
    for t in lp["tokens"]:
        offsets.append(pos)
        pos += len(t)
    assert lp["text_offset"] == offsets


def test_echo_max_tokens_0_returns_the_prompt_scored(server, hf):
    base, _ = server
    tok, score, _ = hf
    text = "The quick brown fox jumps"
    ids = tok(text).input_ids
    status, body = _post(base, {"model": MODEL_NAME, "prompt": text, "echo": True,
                                "logprobs": 1, "max_tokens": 0, "temperature": 0})
    assert status == 200, body
    (choice,) = body["choices"]
    assert choice["text"] == text
    assert choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    _check_prompt_part(choice["logprobs"], ids, tok, score)
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                             "total_tokens": len(ids)}
    # vLLM's prompt_logprobs: [null, {"<id>": {logprob, rank, decoded_token}}, ...]
    plp = choice["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    for j, (p, rank, best, _, _) in enumerate(score(ids), start=1):
        entry = plp[j][str(ids[j])]
        assert entry["logprob"] == pytest.approx(p, abs=ATOL)
        assert entry["rank"] == rank and entry["decoded_token"] == tok.decode([ids[j]])
        assert plp[j][str(best)]["rank"] == 1


def test_echo_token_id_prompts_with_completion(server, hf):
    base, _ = server
    tok, score, greedy = hf
    prompts = [tok("Paris is the capital").input_ids, tok("Hello world! How").input_ids]
    status, body = _post(base, {"model": MODEL_NAME, "prompt": prompts, "echo": True,
                                "logprobs": 2, "max_tokens": 3, "temperature": 0,
                                "ignore_eos": True})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for ids, choice in zip(prompts, body["choices"]):
        gen = greedy(ids, 3)
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids) + 3
        _check_prompt_part(lp, ids, tok, score, num_top=2)
        full = score(ids + gen)
        for k in range(3):
            assert lp["tokens"][len(ids) + k] == tok.decode([gen[k]])
            assert lp["token_logprobs"][len(ids) + k] == pytest.approx(
                full[len(ids) + k - 1][0], abs=ATOL)
        assert choice["text"] == tok.decode(ids) + tok.decode(gen)
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["prompt_tokens"] == sum(map(len, prompts))


def test_echo_without_logprobs_and_with_return_token_ids(server, hf):
    base, _ = server
    tok, _, greedy = hf
    ids = tok("Numbers like 12").input_ids
    status, body = _post(base, {"model": MODEL_NAME, "prompt": ids, "echo": True,
                                "max_tokens": 2, "ignore_eos": True})
    assert status == 200
    assert body["choices"][0]["logprobs"] is None
    assert body["choices"][0]["text"] == tok.decode(ids) + tok.decode(greedy(ids, 2))
    # vLLM: with return_token_ids the ids say what the prompt was; the text is the completion
    status, body = _post(base, {"model": MODEL_NAME, "prompt": ids, "echo": True,
                                "max_tokens": 2, "ignore_eos": True, "return_token_ids": True})
    choice = body["choices"][0]
    assert choice["text"] == tok.decode(greedy(ids, 2))
    assert choice["prompt_token_ids"] == ids and choice["token_ids"] == greedy(ids, 2)


def test_echo_stream_equals_whole_answer(server):
    base, _ = server
    body = {"model": MODEL_NAME, "prompt": ["The river flows", "Hello world"], "echo": True,
            "logprobs": 1, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    status, whole = _post(base, body)
    assert status == 200
    parts: dict[int, dict] = {}
    with httpx.stream("POST", base + "/v1/completions", json={**body, "stream": True},
                      timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        for c in json.loads(ln[6:])["choices"]:
            p = parts.setdefault(c["index"], {"text": "", "tokens": [], "token_logprobs": [],
                                              "text_offset": []})
            p["text"] += c["text"]
            for key in ("tokens", "token_logprobs", "text_offset"):
                p[key] += c["logprobs"][key]
    for c in whole["choices"]:
        p = parts[c["index"]]
        assert p["text"] == c["text"]
        assert p["tokens"] == c["logprobs"]["tokens"]
        assert p["text_offset"] == c["logprobs"]["text_offset"]
        assert p["token_logprobs"][0] is None
        assert p["token_logprobs"][1:] == pytest.approx(c["logprobs"]["token_logprobs"][1:],
                                                        abs=ATOL)


def test_prompt_logprobs_extra_without_echo(server, hf):
    base, _ = server
    tok, score, _ = hf
    text = "Paris is the capital of France"
    ids = tok(text).input_ids
    status, body = _post(base, {"model": MODEL_NAME, "prompt": text, "max_tokens": 1,
                                "prompt_logprobs": 3})
    assert status == 200, body
    plp = body["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    for j, (p, rank, _, _, _) in enumerate(score(ids), start=1):
        assert plp[j][str(ids[j])]["logprob"] == pytest.approx(p, abs=ATOL)
        assert plp[j][str(ids[j])]["rank"] == rank
        alternatives = sorted(e["rank"] for t, e in plp[j].items() if t != str(ids[j]))
        assert alternatives == sorted({1, 2, 3} - {rank})
    assert body["choices"][0]["logprobs"] is None  # no echo: an ordinary completion
    status, err = _post(base, {"model": MODEL_NAME, "prompt": text, "prompt_logprobs": 1,
                               "stream": True})
    assert status == 400 and err["error"]["param"] == "prompt_logprobs"


def test_max_tokens_0_needs_echo(server):
    base, _ = server
    status, err = _post(base, {"model": MODEL_NAME, "prompt": "x", "max_tokens": 0})
    assert status == 400 and err["error"]["param"] == "max_tokens"


def test_models_report_max_model_len(server):
    base, _ = server
    models = httpx.get(base + "/v1/models").json()["data"]
    assert models[0]["id"] == MODEL_NAME and models[0]["max_model_len"] == 256


def test_tokenize_detokenize_as_vllm(server, hf):
    base, _ = server
    tok, _, _ = hf
    text = "Hello world! How are you today?"
    status, body = _post(base, {"prompt": text, "return_token_strs": True}, "/tokenize")
    assert status == 200
    ids = tok(text).input_ids
    assert body == {"count": len(ids), "max_model_len": 256, "tokens": ids,
                    "token_strs": tok.convert_ids_to_tokens(ids)}
    status, body = _post(base, {"model": MODEL_NAME, "prompt": text,
                                "add_special_tokens": False}, "/tokenize")
    assert body["tokens"] == tok(text, add_special_tokens=False).input_ids
    assert body["token_strs"] is None
    messages = [{"role": "user", "content": "Who wrote the book?"}]
    status, body = _post(base, {"messages": messages}, "/tokenize")
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert status == 200 and body["tokens"] == tok(rendered, add_special_tokens=False).input_ids
    status, body = _post(base, {"tokens": ids}, "/detokenize")
    assert status == 200 and body == {"prompt": tok.decode(ids)}
    status, err = _post(base, {"tokens": [10**6]}, "/detokenize")
    assert status == 400 and err["error"]["param"] == "tokens"


def test_lm_eval_remote_tokenizer_over_the_server(server, hf):
    """lm-eval's remote tokenizer (/tokenizer_info, /tokenize, /detokenize) encodes and
    decodes as the model's own tokenizer does."""
    pytest.importorskip("lm_eval")
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    base, _ = server
    tok, _, _ = hf
    assert check_remote_tokenizer_support(base + "/v1/completions")
    remote = RemoteTokenizer(base + "/v1/completions")
    text = "Continuous batching schedules new requests"
    assert remote.encode(text) == tok(text, add_special_tokens=False).input_ids
    assert remote.decode(remote.encode(text)) == text
    assert remote.eos_token == tok.eos_token and remote.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("field,value", [
    ("suffix", "and then"), ("logit_bias", {"5": 10}), ("priority", 1),
    ("response_format", {"type": "structural_tag"}), ("guided_json", {"type": "object"}),
    ("cache_salt", "abc"), ("allowed_token_ids", [1, 2]), ("no_such_field", 1),
])
def test_fields_the_server_cannot_honour_are_400_naming_them(server, field, value):
    from runner.engine import SamplingParams

    if field in {f for f in getattr(SamplingParams, "__dataclass_fields__", {})}:
        pytest.skip(f"the engine's SamplingParams has {field} now")
    base, _ = server
    status, err = _post(base, {"model": MODEL_NAME, "prompt": "x", field: value})
    assert status == 400, err
    assert err["error"]["param"] == field and field in err["error"]["message"]
