"""Property tests of SamplingParams and BeamSearchParams (issue 25.2): any combination of field
values either constructs or raises ValueError / TypeError whose message names a field; the
ones that construct keep the documented invariants (vLLM's rules, DESIGN.md):

    sampling_type     BEAM iff use_beam_search, else GREEDY iff temperature < 1e-5, else RANDOM
    normalized types  stop a list of non-empty str, stop_token_ids a list of ints >= 0, the
                      floats float, best_of an int >= n (None -> n), top_k -1, 0 or >= 1
    per-mode rules    greedy (vLLM 0.24): n 1, best_of 1, top_p 1, top_k 0, min_p 0 (reset);
                      beam: best_of > 1, temperature 0, top_p 1, top_k -1 or 0; otherwise
                      early_stopping False, length_penalty 1; temperature in (0, 0.01) -> 0.01
    ranges            every number finite where a sampler divides or scales by it
    idempotent        rebuilding from the normalized fields gives an equal object and repr
    clone             equal, independent lists

The hand-written cases of each rule are in test_sampling_params.py; these tests draw the values.
"""
from __future__ import annotations

import dataclasses
import math
import re

import hypothesis.strategies as st
import pytest

from runner.engine.sampling_params import (
    _SAMPLING_EPS, BeamSearchParams, RepetitionDetectionParams, RequestOutputKind,
    SamplingParams, SamplingType, StructuredOutputsParams,
)
from tests.fuzz import SIZES, fuzz

# the constructor's arguments (output_text_buffer_length and the EOS books are derived)
FIELDS = [f.name for f in dataclasses.fields(SamplingParams) if f.init]

# Values of a wrong type for any field: each must be refused with the field's name.
junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.binary(max_size=4),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none()), max_size=3),
    st.tuples(st.integers(-3, 3)), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.just(object()), st.just(print), st.just(b"\xff"), st.just(10 ** 400),
    st.sampled_from(["never", "", "nan", "1"]),
)
small_int = st.integers(min_value=-3, max_value=8)
unit = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
plausible = {
    "n": small_int, "best_of": st.one_of(st.none(), small_int),
    "presence_penalty": st.floats(-3, 3), "frequency_penalty": st.floats(-3, 3),
    "repetition_penalty": st.floats(-1, 3),
    "temperature": st.one_of(st.just(0.0), st.just(1e-6), st.floats(-0.5, 3)),
    "top_p": st.one_of(st.just(1.0), unit), "top_k": st.integers(-3, 50),
    "min_p": unit, "seed": st.one_of(st.none(), st.integers(-(2 ** 65), 2 ** 65)),
    "use_beam_search": st.booleans(), "length_penalty": st.one_of(st.just(1.0), st.floats(-2, 2)),
    "early_stopping": st.sampled_from([False, True, "never"]),
    "stop": st.one_of(st.none(), st.text(max_size=4), st.lists(st.text(max_size=4), max_size=3)),
    "stop_token_ids": st.one_of(st.none(), st.lists(st.integers(-2, 100), max_size=3)),
    "include_stop_str_in_output": st.booleans(), "ignore_eos": st.booleans(),
    "max_tokens": st.one_of(st.none(), st.integers(-2, 64)), "min_tokens": st.integers(-2, 64),
    "logprobs": st.one_of(st.none(), st.integers(-2, 20)),
    "prompt_logprobs": st.one_of(st.none(), st.integers(-2, 20)),
    "detokenize": st.booleans(), "skip_special_tokens": st.booleans(),
    "spaces_between_special_tokens": st.booleans(),
    "logits_processors": st.one_of(st.none(), st.lists(st.just(lambda ids, row: row),
                                                       max_size=2)),
    "truncate_prompt_tokens": st.one_of(st.none(), st.integers(-2, 64)),
    # vLLM 0.24's newer fields
    "logprob_token_ids": st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=2)),
    "flat_logprobs": st.booleans(),
    "output_kind": st.sampled_from(list(RequestOutputKind)), "skip_clone": st.booleans(),
    "structured_outputs": st.one_of(st.none(), st.builds(StructuredOutputsParams,
                                                         regex=st.just("[ab]+"))),
    "logit_bias": st.one_of(st.none(), st.dictionaries(st.integers(0, 50),
                                                       st.floats(-100, 100), max_size=3)),
    "allowed_token_ids": st.one_of(st.none(), st.lists(st.integers(-1, 50), max_size=3)),
    "extra_args": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(),
                                                       max_size=2)),
    "routed_experts_prompt_start": st.sampled_from([0, 0, 1, -1]),
    "bad_words": st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=3)),
    "_bad_words_token_ids": st.one_of(st.none(), st.lists(st.lists(st.integers(0, 50),
                                                                   min_size=1, max_size=3),
                                                          max_size=2)),
    "skip_reading_prefix_cache": st.one_of(st.none(), st.booleans()),
    "thinking_token_budget": st.one_of(st.none(), st.sampled_from([-1, 0, 5])),
    "repetition_detection": st.one_of(st.none(), st.just(RepetitionDetectionParams())),
}
assert set(plausible) == set(FIELDS), "a new SamplingParams field needs a strategy here"


@st.composite
def kwargs(draw, junk_rate: float = 0.1):
    """A subset of the fields, each a plausible value or (rarely) one of any type."""
    out = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS))):
        bad = draw(st.floats(0, 1)) < junk_rate
        out[name] = draw(junk if bad else plausible[name])
    return out


def _names_a_field(message: str, names=FIELDS) -> bool:
    return any(re.search(rf"\b{name}\b", message) for name in names)


def _check_invariants(p: SamplingParams) -> None:
    kind = p.sampling_type
    if p.use_beam_search:
        assert kind == SamplingType.BEAM
        assert p.best_of > 1 and p.temperature <= _SAMPLING_EPS and p.top_k in (-1, 0)
        assert p.top_p >= 1.0 - _SAMPLING_EPS
        assert p.early_stopping in (True, False, "never")
    else:
        assert kind == (SamplingType.GREEDY if p.temperature < _SAMPLING_EPS
                        else SamplingType.RANDOM_SEED if p.seed is not None
                        else SamplingType.RANDOM)
        assert p.temperature == 0.0 or p.temperature >= 0.01     # vLLM 0.24's floor
        assert p.early_stopping is False and abs(p.length_penalty - 1.0) < _SAMPLING_EPS
        if kind == SamplingType.GREEDY:
            assert p.best_of == 1 and p.n == 1
            assert (p.top_p, p.top_k, p.min_p) == (1.0, 0, 0.0)   # reset, as vLLM 0.24
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                 "top_p", "min_p", "length_penalty"):
        value = getattr(p, name)
        assert type(value) is float and math.isfinite(value), (name, value)
    assert -2 <= p.presence_penalty <= 2 and -2 <= p.frequency_penalty <= 2
    assert p.repetition_penalty > 0 and p.temperature >= 0
    assert 0 < p.top_p <= 1 and 0 <= p.min_p <= 1
    for name in ("n", "best_of", "top_k", "min_tokens"):
        assert type(getattr(p, name)) is int, name
    assert 1 <= p.n <= p.best_of and p.top_k >= -1 and p.temperature <= 2
    assert p.max_tokens is None or p.min_tokens <= p.max_tokens
    assert isinstance(p.stop, list) and all(isinstance(s, str) and s for s in p.stop)
    assert isinstance(p.stop_token_ids, list)
    assert all(type(t) is int and t >= 0 for t in p.stop_token_ids)
    assert not p.stop or p.detokenize
    assert p.output_text_buffer_length == (
        max(len(s) for s in p.stop) - 1 if p.stop and not p.include_stop_str_in_output else 0)
    # normalization is idempotent: the normalized fields build the same object
    again = SamplingParams(**{f: getattr(p, f) for f in FIELDS})
    assert again == p and repr(again) == repr(p)
    twin = p.clone()
    assert twin == p and (not p.stop or twin.stop is not p.stop)


def _construct(kw: dict) -> None:
    try:
        p = SamplingParams(**kw)
    except (ValueError, TypeError) as e:
        assert _names_a_field(str(e)), f"{type(e).__name__} names no field: {e}"
        assert "\n" not in str(e)
        return
    _check_invariants(p)


@pytest.mark.timeout(120)
@SIZES
def test_any_field_values_construct_or_name_the_field(size):
    fuzz(size, kwargs(), _construct, fast=100, deadline_ms=500)


@pytest.mark.timeout(120)
@SIZES
def test_values_of_any_type_are_refused_by_name(size):
    fuzz(size, kwargs(junk_rate=0.6), _construct, fast=100, deadline_ms=500)


@st.composite
def valid_kwargs(draw):
    """Values that always construct, of each mode, to check the invariants on many objects."""
    mode = draw(st.sampled_from(["greedy", "random", "beam"]))
    kw = {"max_tokens": draw(st.one_of(st.none(), st.integers(1, 64))),
          "stop": draw(st.lists(st.text(min_size=1, max_size=4), max_size=3)),
          "stop_token_ids": draw(st.lists(st.integers(0, 10 ** 6), max_size=3)),
          "include_stop_str_in_output": draw(st.booleans()),
          "seed": draw(st.one_of(st.none(), st.integers(-(2 ** 70), 2 ** 70))),
          "presence_penalty": draw(st.floats(-2, 2)), "frequency_penalty": draw(st.floats(-2, 2)),
          "repetition_penalty": draw(st.floats(1e-3, 10)), "min_p": draw(st.floats(0, 1))}
    if kw["max_tokens"] is not None:
        kw["min_tokens"] = draw(st.integers(0, kw["max_tokens"]))
    if mode == "beam":
        kw.update(use_beam_search=True, best_of=draw(st.integers(2, 8)), temperature=0.0,
                  early_stopping=draw(st.sampled_from([True, False, "never"])),
                  length_penalty=draw(st.floats(-2, 2)))
    elif mode == "greedy":
        kw.update(temperature=0.0,   # vLLM 0.24 raises any positive one to 0.01
                  top_k=draw(st.sampled_from([0, -1, 7])))
    else:
        n = draw(st.integers(1, 4))
        kw.update(n=n, best_of=draw(st.one_of(st.none(), st.integers(n, 8))),
                  temperature=draw(st.floats(_SAMPLING_EPS * 2, 2)),
                  top_p=draw(st.floats(1e-3, 1)), top_k=draw(st.integers(-1, 100)))
    return mode, kw


def _valid(drawn) -> None:
    mode, kw = drawn
    p = SamplingParams(**kw)
    expected = {"greedy": SamplingType.GREEDY, "random": SamplingType.RANDOM,
                "beam": SamplingType.BEAM}[mode]
    if mode == "random" and p.seed is not None:
        expected = SamplingType.RANDOM_SEED
    assert p.sampling_type == expected
    if kw.get("best_of") is None:
        assert p.best_of == p.n
    # vLLM 0.24 keeps top_k as given, and greedy resets it to 0
    assert p.top_k == (0 if mode == "greedy" else kw.get("top_k", 0))
    _check_invariants(p)


@pytest.mark.timeout(120)
@SIZES
def test_valid_values_keep_their_invariants(size):
    fuzz(size, valid_kwargs(), _valid, fast=100, deadline_ms=500)


def _beam_params(kw: dict) -> None:
    try:
        p = BeamSearchParams(**kw)
    except (ValueError, TypeError) as e:
        names = [f.name for f in dataclasses.fields(BeamSearchParams)]
        assert _names_a_field(str(e), names), f"{type(e).__name__} names no field: {e}"
        return
    assert type(p.beam_width) is int and p.beam_width >= 1 and p.max_tokens >= 1
    assert math.isfinite(p.temperature) and p.temperature >= 0
    assert math.isfinite(p.length_penalty)
    assert p.clone() == p


beam_kwargs = st.fixed_dictionaries({}, optional={
    "beam_width": st.one_of(st.integers(-1, 8), junk), "max_tokens": st.one_of(small_int, junk),
    "ignore_eos": st.one_of(st.booleans(), junk), "temperature": st.one_of(unit, junk),
    "length_penalty": st.one_of(st.floats(-2, 2), junk),
    "include_stop_str_in_output": st.one_of(st.booleans(), junk)})


@pytest.mark.timeout(120)
@SIZES
def test_beam_search_params_construct_or_name_the_field(size):
    fuzz(size, beam_kwargs, _beam_params, fast=60, deadline_ms=500)
