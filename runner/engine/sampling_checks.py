"""The checks behind SamplingParams: type coercion and the range rules of each field.

runner/engine/sampling_params.py owns the fields and the order of the checks; this module holds
the checks themselves, so that each rule is written once. Every failure is a ValueError (a
TypeError for top_k's type, as vLLM 0.24 raises) whose message names the field, the value it
got and what it allows: these messages are what a user sees for a bad argument or a bad Hydra
override. Nothing here touches torch or a tokenizer.
"""
from __future__ import annotations

import math
import numbers
from typing import Any


def is_int(value: Any) -> bool:
    # bool is an int subclass, but `n=True` is a mistake, not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not is_int(value):
        allowed = "an int or None" if optional else "an int"
        raise ValueError(f"{name} must be {allowed}, got {describe(value)}.")
    return int(value)


def check_real(name: str, value: Any) -> float:
    # Every float field scales or bounds the logits, so NaN and infinity are refused as vLLM
    # refuses them for temperature and repetition_penalty (an int too big for a float too).
    if not is_real(value):
        raise ValueError(f"{name} must be a number (float), got {describe(value)}.")
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got an int too large for a "
                         "float.") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return result


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {describe(value)}.")
    return value


def check_int_list(name: str, value: Any, *, optional: bool = True,
                   non_negative: bool = True) -> list[int] | None:
    """A list (or tuple) of ints, copied; None stays None when optional."""
    if value is None and optional:
        return None
    if is_int(value):
        raise ValueError(f"{name} must be a list of int or None, got {describe(value)}; "
                         "wrap it in a list.")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of int or None, got {describe(value)}.")
    out = []
    for t in value:
        if not is_int(t) or (non_negative and t < 0):
            kind = "non-negative ints" if non_negative else "ints"
            raise ValueError(f"{name} must contain only {kind}, got {describe(t)}.")
        out.append(int(t))
    return out


def check_str_list(name: str, value: Any) -> list[str]:
    """None -> [], a str -> [str], a list of non-empty str -> a copy (stop, bad_words)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, (list, tuple)):
        value = list(value)
    else:
        raise ValueError(f"{name} must be a str, a list of str or None, got {describe(value)}.")
    for s in value:
        if not isinstance(s, str):
            raise ValueError(f"{name} must contain only str, got {describe(s)}.")
        if not s:
            raise ValueError(f"{name} cannot contain an empty string, got {value!r}.")
    return value


def check_logit_bias(value: Any) -> dict[int, float] | None:
    """{token id: bias}; string keys of digits are read as ids (the OpenAI form)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"logit_bias must be a dict of token id -> float or None, got "
                         f"{describe(value)}.")
    out = {}
    for key, bias in value.items():
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if not is_int(key):
            raise ValueError(f"logit_bias keys must be token ids (int), got {describe(key)}.")
        out[int(key)] = check_real(f"logit_bias[{key}]", bias)
    return out


def check_ranges(p) -> None:
    """vLLM 0.24's bounds of every numeric field of SamplingParams `p` (types already checked)."""
    if p.n < 1:
        raise ValueError(f"n must be at least 1, got {p.n}.")
    if p.n > p.max_n:
        raise ValueError(f"n must be at most {p.max_n}, got {p.n}. To increase this limit, set "
                         "the VLLM_MAX_N_SEQUENCES environment variable.")
    if p.best_of < p.n:
        raise ValueError(f"best_of must be greater than or equal to n, got n={p.n} and "
                         f"best_of={p.best_of}.")
    if not -2.0 <= p.presence_penalty <= 2.0:
        raise ValueError(f"presence_penalty must be in [-2, 2], got {p.presence_penalty}.")
    if not -2.0 <= p.frequency_penalty <= 2.0:
        raise ValueError(f"frequency_penalty must be in [-2, 2], got {p.frequency_penalty}.")
    if not p.repetition_penalty > 0.0:
        raise ValueError(f"repetition_penalty must be greater than zero (1.0 disables it), "
                         f"got {p.repetition_penalty}.")
    if not p.temperature >= 0.0:
        raise ValueError(f"temperature must be non-negative (0 means greedy), got "
                         f"{p.temperature}.")
    if p.temperature > 2.0:
        raise ValueError(f"temperature must be in [0, 2], got {p.temperature}.")
    if not 0.0 < p.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p.top_p}.")
    if p.top_k < -1:
        raise ValueError(f"top_k must be 0 (disable), -1 (disable) or at least 1, got "
                         f"{p.top_k}.")
    if not 0.0 <= p.min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {p.min_p}.")
    if p.max_tokens is not None and p.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 (or None for up to max_model_len), "
                         f"got {p.max_tokens}.")
    if p.min_tokens < 0:
        raise ValueError(f"min_tokens must be greater than or equal to 0, got {p.min_tokens}.")
    if p.max_tokens is not None and p.min_tokens > p.max_tokens:
        raise ValueError(f"min_tokens must be less than or equal to max_tokens={p.max_tokens}, "
                         f"got {p.min_tokens}.")
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(p, name)
        if value is not None and value < -1:
            raise ValueError(f"{name} must be non-negative or -1 (the whole vocabulary), got "
                             f"{value}.")
    if p.truncate_prompt_tokens is not None and p.truncate_prompt_tokens < 1:
        raise ValueError(f"truncate_prompt_tokens must be at least 1 or None, got "
                         f"{p.truncate_prompt_tokens}.")
    if p.stop and not p.detokenize:
        raise ValueError("stop strings are only supported when detokenize is True; set "
                         "detokenize=True or use stop_token_ids.")
    if p.allowed_token_ids is not None and not p.allowed_token_ids:
        raise ValueError("allowed_token_ids is not None and empty: give at least one token id "
                         "or None.")
    if p.routed_experts_prompt_start < 0:
        raise ValueError(f"routed_experts_prompt_start must be non-negative, got "
                         f"{p.routed_experts_prompt_start}.")


def check_not_supported(p) -> None:
    """vLLM 0.24 fields this engine does not serve yet: refused by name, never ignored."""
    if p.logprob_token_ids is not None:
        raise ValueError("logprob_token_ids is not supported by runner.engine yet; use "
                         "logprobs=k (or -1 for the whole vocabulary) instead.")
    if p.flat_logprobs:
        raise ValueError("flat_logprobs=True is not supported by runner.engine yet; logprobs "
                         "come as list[dict[int, Logprob]] (flat_logprobs=False).")
    if p.thinking_token_budget is not None:
        raise ValueError("thinking_token_budget is not supported by runner.engine (it has no "
                         "reasoning parser); leave it None or -1.")
    if p.repetition_detection is not None and p.repetition_detection.max_pattern_size > 0:
        raise ValueError("repetition_detection is not supported by runner.engine yet; leave it "
                         "None (or max_pattern_size=0).")
    if p.routed_experts_prompt_start:
        raise ValueError("routed_experts_prompt_start is only meaningful with "
                         "enable_return_routed_experts, which runner.engine does not support; "
                         "leave it 0.")
