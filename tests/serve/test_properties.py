"""Hypothesis property tests of the request path, each against an independent reference:

- the field validator accepts a body exactly when `jsonschema` accepts it under the schema that
  /openapi.json publishes (one declaration, two implementations);
- every accepted completion / chat body becomes SamplingParams or a 400 naming a request
  field, never another exception; SamplingParams' normalisation holds (best_of >= n, top_k 0
  -> -1, greedy rules);
- SamplingParams itself, fed arbitrary JSON values, raises ValueError / TypeError only;
- json_depth (the numpy scan of raw bytes) equals the depth of the decoded value.
No server is started: the tables are built for the tiny model's facts."""
from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
jsonschema = pytest.importorskip("jsonschema")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from runner.serve.errors import APIError  # noqa: E402
from runner.serve.limits import json_depth  # noqa: E402
from runner.serve.protocol import parse_chat, parse_completion  # noqa: E402
from runner.serve.request_fields import (NOT_IMPLEMENTED, ModelFacts, request_tables,  # noqa
                                         sampling_params_fields)
from runner.serve.schema import Field, body_schema, validate  # noqa: E402

FACTS = ModelFacts(vocab_size=384, max_model_len=64, max_logprobs=5,
                   sampling_fields=sampling_params_fields(), max_n=4, max_prompts=4,
                   max_stop=4, max_stop_chars=8, max_body_bytes=4096)
TABLES = request_tables(FACTS)
DEFAULTS = {"temperature": 0.0, "max_tokens": 4}
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)


def near(spec: Field) -> st.SearchStrategy:
    """Values around what `spec` allows: inside, on and just past its bounds, wrong types."""
    if spec.any_of is not None:
        return st.one_of(*(near(o) for o in spec.any_of))
    t = spec.type
    if t == "boolean":
        s = st.booleans()
    elif t == "integer":
        lo = int(spec.minimum) if spec.minimum is not None else -2**64
        hi = int(spec.maximum) if spec.maximum is not None else 2**64
        s = st.one_of(st.integers(max(lo - 2, -2**65), min(hi + 2, 2**65)),
                      st.sampled_from([lo, hi, lo - 1, hi + 1]),
                      st.integers(lo, min(hi, lo + 50)).map(float))
    elif t == "number":
        lo = spec.minimum if spec.minimum is not None else spec.exclusive_minimum
        lo = -1e6 if lo is None else lo
        hi = 1e6 if spec.maximum is None else spec.maximum
        s = st.one_of(st.floats(lo - 1, hi + 1, allow_nan=False),
                      st.sampled_from([lo, hi, 0, 1]))
    elif t == "string":
        size = (spec.max_length or 8) + 1
        s = st.one_of(st.text(max_size=min(size, 12)), st.sampled_from(list(spec.enum or [""])))
    elif t == "array":
        item = near(spec.items) if spec.items is not None else json_values
        s = st.lists(item, max_size=min((spec.max_items or 4) + 1, 6))
    elif t == "object":
        props = {k: near(v) for k, v in (spec.properties or {}).items()}
        s = st.fixed_dictionaries({}, optional=props) if props else \
            st.dictionaries(st.text(max_size=4), json_values, max_size=3)
    else:
        s = json_values
    return st.one_of(s, s, json_values) if t != "any" else s


def valid(spec: Field) -> st.SearchStrategy:
    """Values that `spec` allows (null too when it is nullable)."""
    if spec.any_of is not None:
        s = st.one_of(*(valid(o) for o in spec.any_of))
    elif spec.enum is not None:
        s = st.sampled_from(list(spec.enum))
    elif spec.type == "boolean":
        s = st.booleans()
    elif spec.type == "integer":
        s = st.integers(int(spec.minimum) if spec.minimum is not None else -2**63,
                        int(spec.maximum) if spec.maximum is not None else 2**63 - 1)
    elif spec.type == "number":
        lo = spec.minimum if spec.minimum is not None else spec.exclusive_minimum
        s = st.floats(lo, spec.maximum, allow_nan=False, allow_infinity=False,
                      exclude_min=spec.exclusive_minimum is not None)
    elif spec.type == "string":
        s = st.text(min_size=spec.min_length or 0,
                    max_size=min(spec.max_length if spec.max_length is not None else 12, 12))
    elif spec.type == "array":
        s = st.lists(valid(spec.items) if spec.items is not None else json_values,
                     min_size=spec.min_items or 0, max_size=min(spec.max_items or 6, 6))
    elif spec.type == "object":
        props = spec.properties or {}
        if props:
            s = st.fixed_dictionaries({k: valid(props[k]) for k in spec.required},
                                      optional={k: valid(v) for k, v in props.items()
                                                if k not in spec.required})
        else:
            values = valid(spec.additional) if isinstance(spec.additional, Field) else \
                json_values
            s = st.dictionaries(st.text(max_size=4), values,
                                max_size=0 if spec.additional is False
                                else min(spec.max_properties or 3, 3))
    else:
        s = json_values
    return st.one_of(st.none(), s) if spec.nullable else s


def bodies(table: dict) -> st.SearchStrategy:
    """Mostly valid bodies: the required fields, up to four optional ones, each valid three
    times in four; now and then a field the server does not know."""
    required = [n for n, f in table.items() if f.required_field]
    optional = sorted(n for n in table if n not in required)

    @st.composite
    def body(draw):
        out = {}
        names = required + sorted(draw(st.sets(st.sampled_from(optional), max_size=4)))
        for name in names:
            good = draw(st.integers(0, 3)) > 0
            out[name] = draw(valid(table[name]) if good else near(table[name]))
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.sampled_from(["foo", *sorted(NOT_IMPLEMENTED)[:3]]))] = 1
        return out

    return body()


def _validator_accepts(table: dict, body: dict) -> bool:
    try:
        validate(body, table, NOT_IMPLEMENTED)
        return True
    except APIError as e:
        assert e.status == 400 and e.param is not None
        return False


def _agree(name: str, examples: int) -> None:
    table = TABLES[name]
    reference = jsonschema.Draft202012Validator(body_schema(table))

    @settings(SETTINGS, max_examples=examples)
    @given(body=bodies(table))
    def check(body):
        assert _validator_accepts(table, body) == reference.is_valid(body), body

    check()


def _parses(name: str, parse, examples: int) -> None:
    table = TABLES[name]
    known = frozenset(table)

    @settings(SETTINGS, max_examples=examples)
    @given(body=bodies(table))
    def check(body):
        try:
            f = validate(body, table, NOT_IMPLEMENTED)
        except APIError:
            return
        try:
            req = parse(f, DEFAULTS, FACTS.sampling_fields, known)
        except APIError as e:
            assert e.status == 400 and e.message
            assert e.param is None or e.param in known, (e.param, e.message)
            return
        p = req.params
        assert p.best_of >= p.n >= 1 and p.top_k >= -1
        if p.temperature < 1e-5 and not p.use_beam_search:
            # vLLM 0.24 resets greedy's filters: top_k 0, top_p 1
            assert p.best_of == 1 and p.top_k == 0 and p.top_p == 1.0
        for key in ("n", "seed", "min_tokens", "ignore_eos"):
            if key in f:
                assert getattr(p, key) == f[key]
        if "max_tokens" in f and f["max_tokens"] > 0:
            assert p.max_tokens == f["max_tokens"]

    check()


PARSERS = [("completions", parse_completion), ("chat", parse_chat)]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_validator_agrees_with_published_schema(name):
    _agree(name, 200)


@pytest.mark.parametrize("name,parse", PARSERS)
def test_accepted_bodies_become_sampling_params_or_a_named_400(name, parse):
    _parses(name, parse, 200)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_request_properties_nightly():
    for name in sorted(TABLES):
        _agree(name, 2000)
    for name, parse in PARSERS:
        _parses(name, parse, 2000)


SAMPLING_KWARGS = ("n", "best_of", "temperature", "top_p", "top_k", "min_p", "seed",
                   "presence_penalty", "frequency_penalty", "repetition_penalty", "max_tokens",
                   "min_tokens", "logprobs", "prompt_logprobs", "stop", "stop_token_ids",
                   "use_beam_search", "length_penalty", "early_stopping", "ignore_eos",
                   "skip_special_tokens", "truncate_prompt_tokens")


@SETTINGS
@given(kwargs=st.dictionaries(st.sampled_from(SAMPLING_KWARGS), json_values, max_size=5))
def test_sampling_params_rejects_with_value_errors_only(kwargs):
    from runner.engine import SamplingParams

    try:
        p = SamplingParams(**kwargs)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    assert p.best_of >= p.n >= 1
    assert isinstance(p.stop, list) and isinstance(p.stop_token_ids, list)


def _depth(v) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


tricky_text = st.text(alphabet=st.sampled_from(list('[]{}"\\ab\u00e9\u4e2d')), max_size=8)
nested = st.recursive(st.one_of(st.integers(), tricky_text, st.none()), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(tricky_text, inner, max_size=3)),
    max_leaves=30)


@SETTINGS
@given(value=nested, ascii_only=st.booleans())
def test_json_depth_equals_decoded_depth(value, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert json_depth(raw) == _depth(value)
