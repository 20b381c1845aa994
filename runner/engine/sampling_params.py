"""Sampling parameters: what a user asks of one request's decoding, checked once at construction.

`SamplingParams` mirrors vLLM's offline API (0.6-era names and defaults, including the legacy
beam-search fields). Data moves one way: the user builds a SamplingParams, `__post_init__`
normalizes it (stop -> list[str], stop_token_ids -> list[int], best_of -> n, top_k 0 -> -1) and
validates every field, and from then on the engine only reads it: the scheduler reads
max_tokens/min_tokens/stop fields, the sampler reads the penalties and filters, the detokenizer
reads skip_special_tokens and `output_text_buffer_length`. Nothing here touches torch.

`BeamSearchParams` is the argument of `LLM.beam_search` (vLLM's newer beam-search API).

Every validation error is a ValueError whose message names the field, the value it got and the
values it allows, because these messages are what a user sees when a Hydra override is wrong.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

# Below this a temperature means greedy decoding (vLLM's threshold).
_SAMPLING_EPS = 1e-5

LogitsProcessor = Callable[..., Any]


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    BEAM = 2


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `n=True` is a mistake, not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value):
        allowed = "an int or None" if optional else "an int"
        raise ValueError(f"{name} must be {allowed}, got {_describe(value)}.")
    return int(value)


def _check_real(name: str, value: Any) -> float:
    # Every float field scales or bounds the logits, so NaN and infinity are refused as vLLM
    # refuses them for temperature and repetition_penalty (an int too big for a float too).
    if not _is_real(value):
        raise ValueError(f"{name} must be a number (float), got {_describe(value)}.")
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got an int too large for a "
                         "float.") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return result


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {_describe(value)}.")
    return value


@dataclass
class SamplingParams:
    """Decoding parameters of one request, with vLLM's names, defaults and validation rules.

    max_tokens=None means "until max_model_len"; top_k=0 is accepted as "disabled" and stored
    as -1; logits_processors are callables `fn(output_token_ids, logits_row) -> logits_row`
    (or `fn(prompt_token_ids, output_token_ids, logits_row)`, as vLLM also allows).
    """

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logits_processors: list[LogitsProcessor] | None = None
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        self._normalize()
        self._verify_args()
        if self.use_beam_search:
            self._verify_beam_search()
        else:
            self._verify_non_beam_search()
            if self.temperature < _SAMPLING_EPS:
                self._verify_greedy_sampling()

    # ------------------------------------------------------------------ normalization

    def _normalize(self) -> None:
        """Coerce types and fill derived defaults; rejects values of the wrong type."""
        self.n = _check_int("n", self.n)
        self.best_of = _check_int("best_of", self.best_of, optional=True)
        if self.best_of is None:
            self.best_of = self.n
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty",
                     "temperature", "top_p", "min_p", "length_penalty"):
            setattr(self, name, _check_real(name, getattr(self, name)))
        self.top_k = _check_int("top_k", self.top_k)
        if self.top_k == 0:
            # vLLM v1 and HF both read top_k=0 as "no top-k"; store the one canonical value.
            self.top_k = -1
        self.seed = _check_int("seed", self.seed, optional=True)
        self.max_tokens = _check_int("max_tokens", self.max_tokens, optional=True)
        self.min_tokens = _check_int("min_tokens", self.min_tokens)
        self.logprobs = _check_int("logprobs", self.logprobs, optional=True)
        self.prompt_logprobs = _check_int("prompt_logprobs", self.prompt_logprobs, optional=True)
        self.truncate_prompt_tokens = _check_int(
            "truncate_prompt_tokens", self.truncate_prompt_tokens, optional=True)
        for name in ("use_beam_search", "include_stop_str_in_output", "ignore_eos",
                     "detokenize", "skip_special_tokens", "spaces_between_special_tokens"):
            _check_bool(name, getattr(self, name))
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(
                "early_stopping must be True, False or 'never', got "
                f"{_describe(self.early_stopping)}.")

        self.stop = self._normalize_stop(self.stop)
        self.stop_token_ids = self._normalize_stop_token_ids(self.stop_token_ids)

        if self.logits_processors is not None:
            if callable(self.logits_processors):
                raise ValueError(
                    "logits_processors must be a list of callables, got a single callable; "
                    "wrap it in a list.")
            if not isinstance(self.logits_processors, (list, tuple)):
                raise ValueError(
                    "logits_processors must be a list of callables or None, got "
                    f"{_describe(self.logits_processors)}.")
            processors = list(self.logits_processors)
            for fn in processors:
                if not callable(fn):
                    raise ValueError(
                        f"logits_processors must contain only callables, got {_describe(fn)}.")
            self.logits_processors = processors

    @staticmethod
    def _normalize_stop(stop: Any) -> list[str]:
        if stop is None:
            return []
        if isinstance(stop, str):
            stop = [stop]
        elif isinstance(stop, (list, tuple)):
            stop = list(stop)
        else:
            raise ValueError(f"stop must be a str, a list of str or None, got {_describe(stop)}.")
        for s in stop:
            if not isinstance(s, str):
                raise ValueError(f"stop must contain only str, got {_describe(s)}.")
            if not s:
                raise ValueError("stop cannot contain an empty string, got ''.")
        return stop

    @staticmethod
    def _normalize_stop_token_ids(ids: Any) -> list[int]:
        if ids is None:
            return []
        if _is_int(ids):
            raise ValueError(
                f"stop_token_ids must be a list of int or None, got {_describe(ids)}; "
                "wrap it in a list.")
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"stop_token_ids must be a list of int or None, got {_describe(ids)}.")
        out = []
        for t in ids:
            if not _is_int(t) or t < 0:
                raise ValueError(
                    f"stop_token_ids must contain only non-negative ints, got {_describe(t)}.")
            out.append(int(t))
        return out

    # ------------------------------------------------------------------ validation

    def _verify_args(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.best_of < self.n:
            raise ValueError(
                f"best_of must be greater than or equal to n, got n={self.n} and "
                f"best_of={self.best_of}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not self.repetition_penalty > 0.0:
            raise ValueError(
                f"repetition_penalty must be greater than zero (1.0 disables it), got "
                f"{self.repetition_penalty}.")
        if not self.temperature >= 0.0:
            raise ValueError(
                f"temperature must be non-negative (0 means greedy), got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(
                f"top_k must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(
                f"max_tokens must be at least 1 (or None for up to max_model_len), got "
                f"{self.max_tokens}.")
        if self.min_tokens < 0:
            raise ValueError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got "
                f"{self.min_tokens}.")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be non-negative or None, got {self.logprobs}.")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(
                f"prompt_logprobs must be non-negative or None, got {self.prompt_logprobs}.")
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(
                f"truncate_prompt_tokens must be at least 1 or None, got "
                f"{self.truncate_prompt_tokens}.")
        if self.stop and not self.detokenize:
            raise ValueError(
                "stop strings are only supported when detokenize is True; set detokenize=True "
                "or use stop_token_ids.")

    def _verify_beam_search(self) -> None:
        if self.best_of == 1:
            raise ValueError(
                f"best_of must be greater than 1 when using beam search (it is the beam width), "
                f"got {self.best_of}.")
        if self.temperature > _SAMPLING_EPS:
            raise ValueError(
                f"temperature must be 0 when using beam search, got {self.temperature}.")
        if self.top_p < 1.0 - _SAMPLING_EPS:
            raise ValueError(f"top_p must be 1 when using beam search, got {self.top_p}.")
        if self.top_k != -1:
            raise ValueError(f"top_k must be -1 when using beam search, got {self.top_k}.")

    def _verify_non_beam_search(self) -> None:
        if self.early_stopping is not False:
            raise ValueError(
                "early_stopping is only used with use_beam_search=True; it must be False "
                f"otherwise, got {self.early_stopping!r}.")
        if not 1.0 - _SAMPLING_EPS < self.length_penalty < 1.0 + _SAMPLING_EPS:
            raise ValueError(
                "length_penalty is only used with use_beam_search=True; it must be 1.0 "
                f"otherwise, got {self.length_penalty}.")

    def _verify_greedy_sampling(self) -> None:
        # vLLM silently resets these; this project makes them errors so a sweep that sets
        # temperature=0 together with top_p never reports results for a filter it did not use.
        if self.best_of > 1:
            raise ValueError(
                f"best_of must be 1 when using greedy sampling (temperature=0), got "
                f"{self.best_of}; set temperature > 0 to sample several candidates.")
        if self.top_p < 1.0 - _SAMPLING_EPS:
            raise ValueError(
                f"top_p must be 1 when using greedy sampling (temperature=0), got {self.top_p}; "
                "set temperature > 0 to sample with top_p.")
        if self.top_k != -1:
            raise ValueError(
                f"top_k must be -1 (or 0) when using greedy sampling (temperature=0), got "
                f"{self.top_k}; set temperature > 0 to sample with top_k.")

    # ------------------------------------------------------------------ derived values

    @property
    def sampling_type(self) -> SamplingType:
        if self.use_beam_search:
            return SamplingType.BEAM
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM

    @property
    def output_text_buffer_length(self) -> int:
        """Characters of decoded text to hold back, because they may still become a stop string."""
        if self.stop and not self.include_stop_str_in_output:
            return max(len(s) for s in self.stop) - 1
        return 0

    def clone(self) -> SamplingParams:
        """A deep copy that shares the logits processors (they may hold models or tokenizers)."""
        shared = {id(fn): fn for fn in (self.logits_processors or [])}
        return copy.deepcopy(self, memo=shared)

    def __repr__(self) -> str:
        fields = ("n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty",
                  "temperature", "top_p", "top_k", "min_p", "seed", "use_beam_search",
                  "length_penalty", "early_stopping", "stop", "stop_token_ids",
                  "include_stop_str_in_output", "ignore_eos", "max_tokens", "min_tokens",
                  "logprobs", "prompt_logprobs", "skip_special_tokens",
                  "spaces_between_special_tokens", "truncate_prompt_tokens")
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
        return f"SamplingParams({body})"


@dataclass
class BeamSearchParams:
    """Arguments of `LLM.beam_search`: width, length and the scoring of finished beams."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        self.beam_width = _check_int("beam_width", self.beam_width)
        self.max_tokens = _check_int("max_tokens", self.max_tokens)
        self.temperature = _check_real("temperature", self.temperature)
        self.length_penalty = _check_real("length_penalty", self.length_penalty)
        _check_bool("ignore_eos", self.ignore_eos)
        _check_bool("include_stop_str_in_output", self.include_stop_str_in_output)
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if not self.temperature >= 0.0:
            raise ValueError(
                f"temperature must be non-negative (0 means plain log-probabilities), got "
                f"{self.temperature}.")

    def clone(self) -> BeamSearchParams:
        return dataclasses.replace(self)
