"""SamplingParams / BeamSearchParams: vLLM's defaults, normalization, per-mode validation, repr."""
from __future__ import annotations

import pytest

from runner.engine.sampling_params import (
    _SAMPLING_EPS, BeamSearchParams, RepetitionDetectionParams, RequestOutputKind,
    SamplingParams, SamplingType, StructuredOutputsParams,
)


def test_defaults_match_vllm():
    p = SamplingParams()
    expected = dict(
        n=1, best_of=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
        # vLLM 0.24: top_k defaults to 0 (disabled; -1 is accepted as disabled too)
        temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None, use_beam_search=False,
        length_penalty=1.0, early_stopping=False, stop=[], stop_token_ids=[],
        include_stop_str_in_output=False, ignore_eos=False, max_tokens=16, min_tokens=0,
        logprobs=None, prompt_logprobs=None, detokenize=True, skip_special_tokens=True,
        spaces_between_special_tokens=True, logits_processors=None, truncate_prompt_tokens=None,
        # vLLM 0.24's newer fields
        logprob_token_ids=None, flat_logprobs=False, output_kind=RequestOutputKind.CUMULATIVE,
        skip_clone=False, structured_outputs=None, logit_bias=None, allowed_token_ids=None,
        extra_args=None, routed_experts_prompt_start=0, bad_words=[],
        skip_reading_prefix_cache=None, thinking_token_budget=None, repetition_detection=None,
    )
    for name, value in expected.items():
        assert getattr(p, name) == value, name
    assert p.sampling_type == SamplingType.RANDOM
    assert _SAMPLING_EPS == 1e-5
    # vLLM 0.24's GREEDY, RANDOM, RANDOM_SEED, then this project's legacy BEAM
    assert [t.value for t in SamplingType] == [0, 1, 2, 3]
    assert [t.name for t in SamplingType] == ["GREEDY", "RANDOM", "RANDOM_SEED", "BEAM"]


def test_normalization():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "bc")).stop == ["a", "bc"]
    assert SamplingParams(stop_token_ids=(5, 7)).stop_token_ids == [5, 7]
    # vLLM 0.24 keeps top_k as given: 0 and -1 both mean disabled
    assert SamplingParams(top_k=0).top_k == 0 and SamplingParams(top_k=-1).top_k == -1
    assert SamplingParams(seed=-1).seed is None                    # vLLM 0.24: -1 = unseeded
    assert SamplingParams(logprobs=True).logprobs == 1
    assert SamplingParams(prompt_logprobs=True).prompt_logprobs == 1
    assert SamplingParams(logprobs=-1).logprobs == -1              # the whole vocabulary
    assert SamplingParams(bad_words="x").bad_words == ["x"]
    assert SamplingParams(logit_bias={"3": 1}).logit_bias == {3: 1.0}
    assert SamplingParams(thinking_token_budget=-1).thinking_token_budget is None
    assert SamplingParams(n=3).best_of == 3
    assert SamplingParams(n=2, best_of=4).best_of == 4
    assert SamplingParams(max_tokens=None).max_tokens is None
    p = SamplingParams(temperature=1, top_p=1)
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)


def test_sampling_type():
    assert SamplingParams(temperature=0.0).sampling_type == SamplingType.GREEDY
    # vLLM 0.24 raises a positive temperature below 0.01 to 0.01: it samples
    tiny = SamplingParams(temperature=1e-6)
    assert tiny.temperature == 0.01 and tiny.sampling_type == SamplingType.RANDOM
    assert SamplingParams(temperature=0.7).sampling_type == SamplingType.RANDOM
    assert SamplingParams(temperature=0.7, seed=1).sampling_type == SamplingType.RANDOM_SEED
    beam = SamplingParams(n=2, use_beam_search=True, temperature=0.0)
    assert beam.sampling_type == SamplingType.BEAM


def test_output_text_buffer_length():
    assert SamplingParams().output_text_buffer_length == 0
    assert SamplingParams(stop=["a", "abcd", "xy"]).output_text_buffer_length == 3
    assert SamplingParams(stop=["abcd"], include_stop_str_in_output=True
                          ).output_text_buffer_length == 0


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=0), ["n", "0"]),
    (dict(n=2, best_of=1), ["best_of", "n=2", "best_of=1"]),
    (dict(presence_penalty=2.5), ["presence_penalty", "[-2, 2]", "2.5"]),
    (dict(frequency_penalty=-3.0), ["frequency_penalty", "[-2, 2]", "-3.0"]),
    (dict(repetition_penalty=0.0), ["repetition_penalty", "greater than zero", "0.0"]),
    (dict(temperature=-0.1), ["temperature", "non-negative", "-0.1"]),
    (dict(top_p=1.5), ["top_p must be in (0, 1], got 1.5."]),
    (dict(top_p=0.0), ["top_p", "(0, 1]", "0.0"]),
    (dict(top_k=-2), ["top_k", "-1", "-2"]),
    (dict(temperature=2.5), ["temperature must be in [0, 2], got 2.5."]),   # vLLM 0.24
    (dict(bad_words=["ok", ""]), ["bad_words", "empty"]),
    (dict(allowed_token_ids=[]), ["allowed_token_ids", "empty"]),
    (dict(allowed_token_ids=[1, -3]), ["allowed_token_ids", "-3"]),
    (dict(logit_bias=[1]), ["logit_bias", "dict"]),
    (dict(logit_bias={"a": 1.0}), ["logit_bias", "'a'"]),
    (dict(logit_bias={1: float("nan")}), ["logit_bias", "finite"]),
    (dict(output_kind=1), ["output_kind", "RequestOutputKind"]),
    (dict(structured_outputs={"json": {}}), ["structured_outputs", "StructuredOutputsParams"]),
    (dict(extra_args=[1]), ["extra_args", "dict"]),
    (dict(thinking_token_budget=1.5), ["thinking_token_budget"]),
    # vLLM 0.24 fields this engine refuses by name instead of ignoring
    (dict(logprob_token_ids=[1, 2]), ["logprob_token_ids", "not supported"]),
    (dict(flat_logprobs=True), ["flat_logprobs", "not supported"]),
    (dict(thinking_token_budget=8), ["thinking_token_budget", "not supported"]),
    (dict(repetition_detection=RepetitionDetectionParams(4, 1, 2)),
     ["repetition_detection", "not supported"]),
    (dict(routed_experts_prompt_start=3), ["routed_experts_prompt_start"]),
    (dict(n=20000), ["n must be at most 16384", "VLLM_MAX_N_SEQUENCES"]),
    (dict(min_p=1.5), ["min_p", "[0, 1]", "1.5"]),
    (dict(max_tokens=0), ["max_tokens", "at least 1", "0"]),
    (dict(min_tokens=-1), ["min_tokens", "-1"]),
    (dict(min_tokens=20, max_tokens=10), ["min_tokens", "max_tokens=10", "20"]),
    (dict(logprobs=-2), ["logprobs", "non-negative or -1", "-2"]),       # vLLM 0.24: -1 ok
    (dict(prompt_logprobs=-2), ["prompt_logprobs", "non-negative", "-2"]),
    (dict(stop=["ok", ""]), ["stop", "empty"]),
    (dict(seed=1.5), ["seed", "int", "1.5"]),
    (dict(truncate_prompt_tokens=0), ["truncate_prompt_tokens", "at least 1", "0"]),
    # unknown or wrong types
    (dict(temperature="0.7"), ["temperature", "number", "'0.7'", "str"]),
    (dict(n=1.0), ["n", "int", "1.0"]),
    (dict(n=True), ["n", "int", "True"]),
    (dict(stop=5), ["stop", "str", "5"]),
    (dict(stop=["a", 3]), ["stop", "str", "3"]),
    (dict(stop_token_ids=7), ["stop_token_ids", "list", "7"]),
    (dict(stop_token_ids=["a"]), ["stop_token_ids", "int", "'a'"]),
    (dict(ignore_eos="yes"), ["ignore_eos", "True or False", "'yes'"]),
    (dict(early_stopping="sometimes"), ["early_stopping", "'never'", "'sometimes'"]),
    (dict(logits_processors=[1]), ["logits_processors", "callable"]),
    (dict(logits_processors=lambda ids, row: row), ["logits_processors", "list"]),
    (dict(logits_processors=3), ["logits_processors", "list", "3 (int)"]),
    # non-finite numbers (vLLM refuses them for temperature and repetition_penalty)
    (dict(temperature=float("inf")), ["temperature", "finite", "inf"]),
    (dict(repetition_penalty=float("nan")), ["repetition_penalty", "finite", "nan"]),
    (dict(use_beam_search=True, best_of=2, temperature=0.0, length_penalty=float("-inf")),
     ["length_penalty", "finite"]),
    (dict(presence_penalty=10 ** 400), ["presence_penalty", "finite", "too large"]),
])
def test_general_validation(kwargs, words):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=1), ["best_of", "greater than 1", "1"]),
    (dict(n=2, temperature=0.5), ["temperature", "0", "0.5", "beam search"]),
    (dict(n=2, temperature=0.0, top_p=0.9), ["top_p", "1", "0.9", "beam search"]),
    (dict(n=2, temperature=0.0, top_k=5), ["top_k", "-1", "5", "beam search"]),
    (dict(n=2, structured_outputs=StructuredOutputsParams(regex="a")),
     ["structured_outputs", "use_beam_search"]),
])
def test_beam_validation(kwargs, words):
    kwargs = {"use_beam_search": True, "temperature": 0.0, **kwargs}
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_accepts_early_stopping_values(early_stopping):
    p = SamplingParams(n=2, use_beam_search=True, temperature=0.0, length_penalty=0.6,
                       early_stopping=early_stopping)
    assert p.early_stopping == early_stopping
    assert p.length_penalty == 0.6


def test_non_beam_validation():
    with pytest.raises(ValueError, match="early_stopping.*use_beam_search=True"):
        SamplingParams(early_stopping=True)
    with pytest.raises(ValueError, match="early_stopping"):
        SamplingParams(early_stopping="never")
    with pytest.raises(ValueError, match=r"length_penalty is only used with use_beam_search=True"):
        SamplingParams(length_penalty=0.5)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=2), ["n must be 1 when using greedy sampling, got 2."]),      # vLLM 0.24's message
    (dict(best_of=3), ["best_of must be 1", "3"]),                        # legacy best_of
])
def test_greedy_validation(kwargs, words):
    with pytest.raises(ValueError) as err:
        SamplingParams(temperature=0.0, **kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_greedy_resets_filters_as_vllm_0_24():
    # vLLM 0.24 (SamplingParams.__post_init__): greedy sets top_p=1, top_k=0, min_p=0
    p = SamplingParams(temperature=0.0, top_k=10, top_p=0.9, min_p=0.2, seed=3, logprobs=5,
                       min_tokens=2)
    assert p.sampling_type == SamplingType.GREEDY
    assert (p.top_p, p.top_k, p.min_p) == (1.0, 0, 0.0)


def test_top_k_type_is_a_type_error():
    with pytest.raises(TypeError, match="top_k must be an integer"):   # vLLM 0.24 raises TypeError
        SamplingParams(top_k=2.5)


def test_structured_outputs_params():
    assert StructuredOutputsParams(choice=("a", "b")).choice == ["a", "b"]
    with pytest.raises(ValueError, match="only use one kind"):
        StructuredOutputsParams(json={}, regex="a")
    with pytest.raises(ValueError, match="must use one kind"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="choice cannot be an empty list"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(ValueError, match="grammar cannot be an empty string"):
        StructuredOutputsParams(grammar="  ")
    with pytest.raises(ValueError, match="structured_outputs"):
        BeamSearchParams(beam_width=2, max_tokens=4,
                         structured_outputs=StructuredOutputsParams(regex="a"))


def test_generation_config_and_tokenizer_hooks():
    p = SamplingParams(stop_token_ids=[7])
    p.update_from_generation_config({"eos_token_id": [2, 5]}, eos_token_id=2)
    assert p.eos_token_id == 2 and sorted(p.stop_token_ids) == [5, 7]
    assert p.all_stop_token_ids == {2, 5, 7}

    class Tok:   # "a" -> [1], " a" -> [2]; "b c" -> [3, 4], " b c" -> [5, 4]
        def encode(self, text, add_special_tokens=False):
            return {"a": [1], " a": [2], "b c": [3, 4], " b c": [5, 4], "d": [6],
                    " d": [6]}[text]
    q = SamplingParams(bad_words=["a", " b c", "d"])
    q.check_for_model(10, Tok())
    assert q.bad_words_token_ids == [[1], [2], [3, 4], [5, 4], [6]]
    with pytest.raises(ValueError, match=r"\[12\] in logit_bias .* Vocabulary size: 10"):
        SamplingParams(logit_bias={12: 1.0}).check_for_model(10, Tok())
    with pytest.raises(ValueError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=[3, 10]).check_for_model(10, Tok())


def test_skip_clone_is_shallow():
    p = SamplingParams(stop=["x"], skip_clone=True)
    assert p.clone().stop is p.stop


def test_from_optional_clamps_logit_bias():
    p = SamplingParams.from_optional(temperature=None, top_p=None, logit_bias={"5": 300})
    assert p.temperature == 1.0 and p.logit_bias == {5: 100.0}


def test_clone_is_deep_but_shares_processors():
    def proc(ids, row):
        return row
    p = SamplingParams(stop=["x"], stop_token_ids=[3], logits_processors=[proc], seed=7)
    q = p.clone()
    assert q == p and q is not p
    q.stop.append("y")
    q.stop_token_ids.append(4)
    assert p.stop == ["x"] and p.stop_token_ids == [3]
    assert q.logits_processors[0] is proc


def test_repr_reads_like_vllm():
    # vLLM 0.24's __repr__ layout (no best_of unless the legacy fields are in use)
    r = repr(SamplingParams(temperature=0.5, stop="\n", max_tokens=32))
    assert r.startswith("SamplingParams(n=1, presence_penalty=0.0, "
                        "frequency_penalty=0.0, repetition_penalty=1.0, temperature=0.5, "
                        "top_p=1.0, top_k=0, min_p=0.0, seed=None, ")
    assert "stop=['\\n']" in r and "max_tokens=32" in r
    assert r.endswith("structured_outputs=None, extra_args=None)")
    assert "best_of=4, use_beam_search=True" in repr(
        SamplingParams(use_beam_search=True, best_of=4, temperature=0.0))


def test_beam_search_params():
    p = BeamSearchParams(beam_width=4, max_tokens=20)
    assert (p.ignore_eos, p.temperature, p.length_penalty, p.include_stop_str_in_output) == (
        False, 0.0, 1.0, False)
    with pytest.raises(ValueError, match=r"beam_width must be at least 1, got 0"):
        BeamSearchParams(beam_width=0, max_tokens=5)
    with pytest.raises(ValueError, match=r"max_tokens must be at least 1, got 0"):
        BeamSearchParams(beam_width=2, max_tokens=0)
    with pytest.raises(ValueError, match=r"beam_width must be an int"):
        BeamSearchParams(beam_width="2", max_tokens=5)
    with pytest.raises(ValueError, match=r"temperature"):
        BeamSearchParams(beam_width=2, max_tokens=5, temperature=-1.0)
    assert p.clone() == p
