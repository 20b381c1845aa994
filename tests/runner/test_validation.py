"""The sampling-mode JSON Schemas (runner/validation.py) against runner.engine.SamplingParams.

Both encode DESIGN.md's rules; the table below holds valid and invalid configs of every mode and
each must be accepted or rejected by both alike. The messages must name the field and the
allowed values, because they are what a user sees for a bad override.
"""
from __future__ import annotations

import dataclasses

import pytest

from runner.schemas import SamplingConfig, to_plain
from runner.validation import (ConfigError, SAMPLING_SCHEMA, sampling_errors, sampling_mode,
                               validate_run, validate_sampling)

GREEDY = dict(temperature=0.0)
BEAM = dict(use_beam_search=True, best_of=4, temperature=0.0)
RANDOM = dict(temperature=0.8, top_p=0.9)

# (name, overrides of SamplingConfig's defaults, valid?)
TABLE = [
    ("default", {}, True),
    ("greedy", GREEDY, True),
    ("greedy top_k 0 means disabled", {**GREEDY, "top_k": 0}, True),
    ("greedy with top_p", {**GREEDY, "top_p": 0.9}, False),
    ("greedy with top_k", {**GREEDY, "top_k": 5}, False),
    ("greedy n=2", {**GREEDY, "n": 2}, False),
    ("greedy best_of=3", {**GREEDY, "best_of": 3}, False),
    ("random", RANDOM, True),
    ("random n=4 best_of=6", {**RANDOM, "n": 4, "best_of": 6}, True),
    ("random best_of < n", {**RANDOM, "n": 4, "best_of": 2}, False),
    ("random top_k 40", {**RANDOM, "top_k": 40}, True),
    ("random top_k -2", {**RANDOM, "top_k": -2}, False),
    ("random top_p 0", {**RANDOM, "top_p": 0.0}, False),
    ("random top_p 1.5", {**RANDOM, "top_p": 1.5}, False),
    ("random negative temperature", {"temperature": -0.5}, False),
    ("random early_stopping", {**RANDOM, "early_stopping": True}, False),
    ("random length_penalty", {**RANDOM, "length_penalty": 0.5}, False),
    ("random min_p 0.1", {**RANDOM, "min_p": 0.1}, True),
    ("random min_p 2", {**RANDOM, "min_p": 2.0}, False),
    ("random presence_penalty 3", {**RANDOM, "presence_penalty": 3.0}, False),
    ("random repetition_penalty 0", {**RANDOM, "repetition_penalty": 0.0}, False),
    ("random seed", {**RANDOM, "seed": 1234}, True),
    ("beam", BEAM, True),
    ("beam n=2", {**BEAM, "n": 2}, True),
    ("beam early_stopping true", {**BEAM, "early_stopping": True}, True),
    ("beam early_stopping never", {**BEAM, "early_stopping": "never"}, True),
    ("beam early_stopping maybe", {**BEAM, "early_stopping": "maybe"}, False),
    ("beam length_penalty", {**BEAM, "length_penalty": 0.6}, True),
    ("beam temperature 0.7", {**BEAM, "temperature": 0.7}, False),
    ("beam best_of 1", {**BEAM, "best_of": 1}, False),
    ("beam best_of default (n=1)", {"use_beam_search": True, "temperature": 0.0}, False),
    ("beam top_p", {**BEAM, "top_p": 0.9}, False),
    ("beam top_k", {**BEAM, "top_k": 10}, False),
    ("max_tokens 0", {"max_tokens": 0}, False),
    ("max_tokens null", {"max_tokens": None}, True),
    ("min_tokens > max_tokens", {"max_tokens": 4, "min_tokens": 8}, False),
    ("min_tokens -1", {"min_tokens": -1}, False),
    ("logprobs 5", {"logprobs": 5}, True),
    ("logprobs -1", {"logprobs": -1}, False),
    ("prompt_logprobs -1", {"prompt_logprobs": -1}, False),
    ("stop strings", {"stop": ["\n", "###"], "stop_token_ids": [2]}, True),
    ("stop empty string", {"stop": [""]}, False),
    ("stop_token_ids negative", {"stop_token_ids": [-1]}, False),
]


# The runner's schema stays stricter than vLLM 0.24's SamplingParams here, on purpose (a sweep
# that sets temperature=0 with top_p would report results for a filter it did not use): vLLM
# 0.24 resets top_p/top_k for greedy and takes logprobs=-1 as the whole vocabulary.
RUNNER_STRICTER = {"greedy with top_p", "greedy with top_k", "logprobs -1", "prompt_logprobs -1"}


def _cfg(overrides: dict) -> dict:
    return to_plain(dataclasses.replace(SamplingConfig(), **overrides))


@pytest.mark.parametrize("name,overrides,valid", TABLE, ids=[t[0] for t in TABLE])
def test_schema_agrees_with_sampling_params(name, overrides, valid):
    from runner.engine.sampling_params import SamplingParams

    cfg = _cfg(overrides)
    schema_ok = not sampling_errors(cfg)
    try:
        SamplingParams(**cfg)
        params_ok = True
    except ValueError:
        params_ok = False
    assert schema_ok == valid, (name, sampling_errors(cfg))
    assert params_ok == (valid or name in RUNNER_STRICTER), name


def test_mode_names_follow_sampling_type():
    from runner.engine.sampling_params import SamplingParams, SamplingType

    expected = {SamplingType.GREEDY: "greedy", SamplingType.RANDOM: "random",
                SamplingType.RANDOM_SEED: "random", SamplingType.BEAM: "beam"}
    for _, overrides, valid in TABLE:
        if valid:
            cfg = _cfg(overrides)
            assert sampling_mode(cfg) == expected[SamplingParams(**cfg).sampling_type]


def test_beam_temperature_message_names_field_mode_and_allowed_value():
    with pytest.raises(ConfigError) as e:
        validate_sampling(_cfg({**BEAM, "temperature": 0.7}))
    msg = str(e.value)
    assert msg.startswith("sampling.temperature=0.7 is not allowed in beam search mode")
    assert msg.endswith("allowed: 0")
    assert "\n" not in msg


@pytest.mark.parametrize("overrides,field,allowed", [
    ({**GREEDY, "top_p": 0.9}, "top_p", "allowed: 1"),
    ({**GREEDY, "top_k": 5}, "top_k", "allowed: -1"),
    ({**BEAM, "best_of": 1}, "best_of", "allowed: > 1"),
    ({**BEAM, "early_stopping": "maybe"}, "early_stopping", 'allowed: true | false | "never"'),
    ({**RANDOM, "early_stopping": True}, "early_stopping", "allowed: false"),
    ({**RANDOM, "length_penalty": 2.0}, "length_penalty", "allowed: 1"),
    ({"max_tokens": 0}, "max_tokens", "allowed: >= 1"),
    ({"logprobs": -3}, "logprobs", "allowed: >= 0"),
])
def test_messages_name_field_and_allowed_values(overrides, field, allowed):
    lines = sampling_errors(_cfg(overrides))
    assert lines, overrides
    assert any(line.startswith(f"sampling.{field}=") and allowed in line for line in lines), lines


def test_schema_is_valid_draft_2020_12():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(SAMPLING_SCHEMA)
    assert set(SAMPLING_SCHEMA["properties"]) == {f.name for f in dataclasses.fields(SamplingConfig)}


def test_validate_run_missing_jsonl(tmp_path):
    from runner.schemas import DatasetConfig, EngineConfig, RunConfig

    cfg = RunConfig(sampling=SamplingConfig(), engine=EngineConfig(),
                    dataset=DatasetConfig(source=f"jsonl:{tmp_path}/missing.jsonl"))
    with pytest.raises(ConfigError, match="jsonl file not found: .*missing.jsonl"):
        validate_run(cfg)
    cfg.dataset.source = "jsonl:"
    with pytest.raises(ConfigError, match="names no file"):
        validate_run(cfg)


def _validated(argv):
    from runner import cli

    validate_run(cli.to_run_config(cli.compose(argv)))


def test_a_remote_run_refuses_local_engine_values():
    remote = ["engine=remote", "engine.url=http://127.0.0.1:9/v1"]
    _validated(remote)                                          # the group's own values: fine
    _validated(remote + ["engine.served_model_name=m", "engine.max_concurrency=4"])
    for value, shown in [("engine.max_num_seqs=8", "engine.max_num_seqs=8"),
                         ("engine.device=cpu", 'engine.device="cpu"'),
                         ("+engine.hf_overrides.rope_theta=5.0",
                          'engine.hf_overrides={"rope_theta": 5.0}')]:
        with pytest.raises(ConfigError, match="does not apply to engine=remote") as e:
            _validated(remote + [value])
        assert str(e.value).startswith(shown), e.value


def test_sleep_mode_is_refused_and_engine_only_arguments_are_declared():
    with pytest.raises(ConfigError, match="engine.enable_sleep_mode=true is not allowed"):
        _validated(["engine.enable_sleep_mode=true"])
    _validated(["engine.pooler_config={pooling_type: MEAN}",
                "engine.profiler_config={profiler: torch, torch_profiler_dir: /tmp/x}"])
