"""Structured outputs over the API as vLLM 0.24 serves them: OpenAI's `response_format`
(json_object, json_schema) and vLLM's `structured_outputs` (choice, regex, json, grammar), plus
`bad_words`, through the openai client. Greedy answers equal the engine's own generate() with the
same constraint (the reference LLM), JSON answers validate against their schema, and bad
combinations are a 400 naming the field."""
from __future__ import annotations

import json
import re

import httpx
import pytest

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from runner.engine import SamplingParams  # noqa: E402
from runner.engine.sampling_params import StructuredOutputsParams  # noqa: E402
from tests.serve.conftest import MODEL_NAME  # noqa: E402

SCHEMA = {"type": "object",
          "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
          "required": ["ok", "color"], "additionalProperties": False}


def _engine_text(llm, prompt, so, max_tokens=40, **kw):
    p = SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=so, **kw)
    return llm.generate([prompt], p, use_tqdm=False)[0].outputs[0].text


def test_completion_structured_outputs_equal_the_engine(client, reference_llm):
    cases = [({"choice": ["yes", "no", "maybe not"]}, lambda t: t in ("yes", "no", "maybe not")),
             ({"regex": r"[a-c]{2}-[0-9]{3}"}, lambda t: re.fullmatch(r"[a-c]{2}-[0-9]{3}", t)),
             ({"grammar": 'root ::= "(" [1-9] ("+" [1-9])* ")"'},
              lambda t: re.fullmatch(r"\([1-9](\+[1-9])*\)?", t))]
    for so, ok in cases:
        r = client.completions.create(model=MODEL_NAME, prompt="Answer:", max_tokens=24,
                                      temperature=0, extra_body={"structured_outputs": so})
        text = r.choices[0].text
        assert ok(text), (so, text)
        assert text == _engine_text(reference_llm, "Answer:", StructuredOutputsParams(**so),
                                    max_tokens=24)


def test_chat_response_format_json_schema_and_json_object(client, reference_llm):
    messages = [{"role": "user", "content": "Give me a color."}]
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=60, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "color", "schema": SCHEMA}},
        extra_body={"structured_outputs": {"disable_any_whitespace": True}})
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    want = reference_llm.chat(messages, SamplingParams(temperature=0, max_tokens=60,
                                                       structured_outputs=so),
                              use_tqdm=False)[0].outputs[0].text
    assert text == want
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=60,
                                       temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:      # cut by max_tokens: the start of an object
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_bad_words_are_never_generated(client, reference_llm):
    out = reference_llm.generate(["The"], SamplingParams(temperature=0, max_tokens=12),
                                 use_tqdm=False)[0].outputs[0]
    free, tok = out.text, reference_llm.get_tokenizer()
    # a generated token that is a word of its own (one token with or without a leading space)
    word = next(w for w in (tok.decode([t]).strip() for t in out.token_ids)
                if w.isascii() and w.isalpha() and len(tok.encode(w, add_special_tokens=False)) == 1)
    r = client.completions.create(model=MODEL_NAME, prompt="The", max_tokens=12, temperature=0,
                                  extra_body={"bad_words": [word]})
    want = reference_llm.generate(["The"], SamplingParams(temperature=0, max_tokens=12,
                                                          bad_words=[word]),
                                  use_tqdm=False)[0].outputs[0].text
    assert r.choices[0].text == want != free


@pytest.mark.parametrize("extra,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"structured_outputs": {"regex": "a+", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "(unclosed"}}, None),
    ({"bad_words": [""]}, "bad_words"),
])
def test_bad_structured_requests_are_400(server, extra, param):
    base, _ = server
    r = httpx.post(base + "/v1/completions", timeout=60,
                   json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param, err
    assert "structured_outputs" in err["message"] or (param or "") in err["message"], err
