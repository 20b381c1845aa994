"""Structured outputs (SamplingParams.structured_outputs) through xgrammar on the tiny Llama:
a choice returns one of the choices, a JSON schema output parses and validates, a regex output
matches, a grammar output is in its language; the mask is the grammar's (checked against
xgrammar's own matcher) and unsupported options raise."""
from __future__ import annotations

import json
import re

import pytest

xgr = pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from runner.engine.sampling_params import SamplingParams, StructuredOutputsParams  # noqa: E402


@pytest.fixture(scope="module")
def llm(tiny_llama):
    from runner.engine import LLM
    return LLM(tiny_llama, device="cpu", max_model_len=160)


def _gen(llm, so, n=1, temperature=0.0, max_tokens=60, prompts=("Hello there", "Once upon")):
    p = SamplingParams(temperature=temperature, n=n, seed=5 if temperature else None,
                       max_tokens=max_tokens, structured_outputs=so)
    return [c for o in llm.generate(list(prompts), p, use_tqdm=False) for c in o.outputs]


def test_choice_returns_one_of_the_choices(llm):
    choices = ["cat", "dog fish", "Positive!"]
    outs = _gen(llm, StructuredOutputsParams(choice=choices))
    outs += _gen(llm, StructuredOutputsParams(choice=choices), n=3, temperature=1.0)
    for c in outs:
        assert c.text in choices and c.finish_reason == "stop", c


def test_json_schema_output_parses_and_validates(llm):
    schema = {"type": "object",
              "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]},
                             "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                      "maxItems": 2}},
              "required": ["ok", "color", "tags"], "additionalProperties": False}
    for c in _gen(llm, StructuredOutputsParams(json=schema, disable_any_whitespace=True),
                  max_tokens=80):
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.text), schema)
    # the schema as a JSON string, as vLLM also takes it
    c = _gen(llm, StructuredOutputsParams(json=json.dumps(schema), disable_any_whitespace=True),
             max_tokens=80, prompts=["Hi"])[0]
    jsonschema.validate(json.loads(c.text), schema)


def test_regex_output_matches(llm):
    pattern = r"(cat|dog)-[0-9]{2}[a-c]?"
    for c in _gen(llm, StructuredOutputsParams(regex=pattern), max_tokens=20):
        assert re.fullmatch(pattern, c.text) and c.finish_reason == "stop", c


def test_grammar_output_is_in_its_language(llm):
    grammar = 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9]'
    for c in _gen(llm, StructuredOutputsParams(grammar=grammar), max_tokens=30):
        if c.finish_reason == "stop":
            assert re.fullmatch(r"\([1-9](\+[1-9])*\)", c.text), c
        else:      # cut by max_tokens: a prefix of a sentence of the language
            assert re.fullmatch(r"\([1-9](\+[1-9])*\+?", c.text), c


def test_mask_is_xgrammars(tiny_llama, llm):
    """Each generated token is one xgrammar's own matcher allows at that point."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    vocab = llm.llm_engine.model_config.hf_config.vocab_size
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab,
                                              stop_token_ids=list(llm.llm_engine.eos_token_ids))
    compiled = xgr.GrammarCompiler(info).compile_regex(r"[a-z]{3,8}")
    c = _gen(llm, StructuredOutputsParams(regex=r"[a-z]{3,8}"), temperature=1.0,
             prompts=["Say"])[0]
    matcher = xgr.GrammarMatcher(compiled)
    for t in c.token_ids:
        assert matcher.accept_token(t), (t, c)
    assert re.fullmatch(r"[a-z]{3,8}", c.text)


def test_unsupported_and_invalid_constraints_raise(llm):
    with pytest.raises(ValueError, match="structural_tag is not supported"):
        _gen(llm, StructuredOutputsParams(structural_tag='{"type": "x"}'))
    with pytest.raises(ValueError, match="whitespace_pattern is not supported"):
        _gen(llm, StructuredOutputsParams(json={"type": "object"}, whitespace_pattern=" *"))
    with pytest.raises(ValueError, match="structured_outputs.regex could not be compiled"):
        _gen(llm, StructuredOutputsParams(regex="(unclosed"))
    with pytest.raises(ValueError, match="structured_outputs.grammar could not be compiled"):
        _gen(llm, StructuredOutputsParams(grammar="root ::= undefined_rule"))
    with pytest.raises(ValueError, match="use_beam_search"):
        SamplingParams(use_beam_search=True, best_of=2, temperature=0.0,
                       structured_outputs=StructuredOutputsParams(regex="a"))


def test_mixed_batch_with_async_scheduling(llm):
    """Structured and plain requests in one batch (async scheduling on, the default): the
    structured ones follow their grammar, the plain ones are what they are alone."""
    assert llm.llm_engine.config.async_scheduling
    plain = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    choice = SamplingParams(temperature=0.0, max_tokens=10,
                            structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    prompts = ["Hello there", "Once upon", "Paris is", "A B C"]
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts[::2], plain, use_tqdm=False)]
    mixed = llm.generate(prompts, [plain, choice, plain, choice], use_tqdm=False)
    assert [mixed[0].outputs[0].token_ids, mixed[2].outputs[0].token_ids] == alone
    assert {mixed[1].outputs[0].text, mixed[3].outputs[0].text} <= {"yes", "no"}
