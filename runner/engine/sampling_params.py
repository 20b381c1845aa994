"""Sampling parameters: what a user asks of one request's decoding, checked once at construction.

`SamplingParams` has every field of vLLM 0.24's, with its names, defaults and validation
(runner/engine/sampling_checks.py holds the checks), plus the legacy fields that this
project's configs still use: `best_of`, `use_beam_search`, `length_penalty`, `early_stopping`
(DESIGN.md's table), `logits_processors` (per-request callables) and `truncate_prompt_tokens`.
Data moves one way: the user builds a SamplingParams, `__post_init__` normalizes it (stop and
bad_words -> list[str], stop_token_ids -> list[int], best_of -> n, seed -1 -> None, logprobs
True -> 1, a temperature in (0, 0.01) -> 0.01, and greedy resets top_p, top_k and min_p as
vLLM 0.24 does) and validates every field; `check_for_model` (called by LLMEngine.add_request)
checks token ids against the vocabulary and turns bad_words into token sequences; from then on
the engine only reads it: the scheduler reads max_tokens/min_tokens/stop fields, the sampler
the penalties, filters, logit_bias, allowed_token_ids, bad words and structured outputs, the
output processor skip_special_tokens, `output_text_buffer_length` and `output_kind`. Nothing
here touches torch.

Differences from vLLM 0.24, each on purpose: fields this engine does not serve yet
(logprob_token_ids, flat_logprobs=True, thinking_token_budget, repetition_detection,
routed_experts_prompt_start) raise a ValueError naming them instead of being ignored;
`skip_reading_prefix_cache` stays None unless set (the engine serves prompt logprobs of cached
prefixes exactly, runner/engine/kv_cache_manager.py), and True makes the request skip the
prefix cache; `sampling_type` adds BEAM for the legacy use_beam_search.

`BeamSearchParams` is the argument of `LLM.beam_search`; `StructuredOutputsParams` the
constraint of `structured_outputs` (runner/engine/structured_output.py applies it);
`RequestOutputKind` says how LLMEngine.step() streams a request's outputs.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Callable

from runner.engine.sampling_checks import (
    check_bool, check_int, check_int_list, check_logit_bias, check_not_supported, check_ranges,
    check_real, check_str_list, describe, is_int,
)

logger = logging.getLogger("runner.engine")

# Below this a temperature means greedy decoding (vLLM's threshold).
_SAMPLING_EPS = 1e-5
# Positive temperatures below this are raised to it (vLLM 0.24: smaller ones overflow).
_MAX_TEMP = 1e-2
# vLLM's default of VLLM_MAX_N_SEQUENCES, the largest n.
_DEFAULT_MAX_N = 16384

LogitsProcessor = Callable[..., Any]

# Backward compatibility of the old private names (tests and callers import them).
_is_int = is_int
_describe = describe
_check_int = check_int
_check_real = check_real
_check_bool = check_bool


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2
    BEAM = 3  # the legacy use_beam_search (not in vLLM 0.24)


class RequestOutputKind(Enum):
    CUMULATIVE = 0   # every RequestOutput holds the whole output so far
    DELTA = 1        # each RequestOutput holds only what is new since the last one
    FINAL_ONLY = 2   # one RequestOutput, when the request finishes


_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass
class StructuredOutputsParams:
    """One constraint on the output (vLLM 0.24's names): a JSON schema (dict or str), a regex, a
    list of choices, a grammar (EBNF / GBNF) or any JSON object; structural_tag is refused by
    the engine (runner/engine/structured_output.py)."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None
    _backend: str | None = field(default=None, init=False)
    _backend_was_auto: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        given = [name for name in _CONSTRAINTS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError("You can only use one kind of structured outputs constraint but "
                             f"multiple are specified: {given}.")
        if not given:
            raise ValueError("You must use one kind of structured outputs constraint (json, "
                             "regex, choice, grammar, json_object or structural_tag) but none "
                             "are specified.")
        if self.choice is not None:
            if not isinstance(self.choice, (list, tuple)) or not all(
                    isinstance(c, str) for c in self.choice):
                raise ValueError(f"structured_outputs.choice must be a list of str, got "
                                 f"{describe(self.choice)}.")
            if not self.choice:
                raise ValueError("structured_outputs.choice cannot be an empty list.")
            self.choice = list(self.choice)
        if isinstance(self.grammar, str) and not self.grammar.strip():
            raise ValueError("structured_outputs.grammar cannot be an empty string.")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (dict or str), got "
                             f"{describe(self.json)}.")

    def all_constraints_none(self) -> bool:
        return all(getattr(self, name) is None for name in _CONSTRAINTS)

    def all_non_structural_tag_constraints_none(self) -> bool:
        return all(getattr(self, name) is None for name in _CONSTRAINTS[:-1])


@dataclass
class RepetitionDetectionParams:
    """vLLM 0.24's n-gram repetition stop (validated; the engine refuses max_pattern_size > 0)."""

    max_pattern_size: int = 0
    min_pattern_size: int = 0
    min_count: int = 0

    def __post_init__(self) -> None:
        if (self.max_pattern_size < 0 or self.min_pattern_size < 0
                or self.min_pattern_size > self.max_pattern_size):
            raise ValueError("max_pattern_size, min_pattern_size must be >= 0, with "
                             "min_pattern_size <= max_pattern_size; set both to 0 to disable.")
        if self.max_pattern_size > 0 and self.min_count < 2:
            raise ValueError("min_count must be >= 2 to detect repetitive patterns; set "
                             "max_pattern_size to 0 to disable.")


@dataclass
class SamplingParams:
    """Decoding parameters of one request, with vLLM 0.24's names, defaults and validation.

    max_tokens=None means "until max_model_len"; top_k 0 or -1 disables top-k; logprobs=-1
    returns the whole vocabulary; logits_processors are callables
    `fn(output_token_ids, logits_row) -> logits_row` (or `fn(prompt_token_ids,
    output_token_ids, logits_row)`).
    """

    n: int = 1
    best_of: int | None = None                  # legacy (vLLM < 0.11)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    use_beam_search: bool = False               # legacy
    length_penalty: float = 1.0                 # legacy (beam search only)
    early_stopping: bool | str = False          # legacy (beam search only)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    skip_clone: bool = False
    # set in __post_init__ / by the engine, not arguments
    output_text_buffer_length: int = field(default=0, init=False)
    _eos_token_id: int | None = field(default=None, init=False)
    _all_stop_token_ids: set = field(default_factory=set, init=False)
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    extra_args: dict[str, Any] | None = None
    routed_experts_prompt_start: int = 0
    bad_words: list[str] | None = None
    _bad_words_token_ids: list[list[int]] | None = None
    skip_reading_prefix_cache: bool | None = None
    thinking_token_budget: int | None = None
    repetition_detection: RepetitionDetectionParams | None = None
    logits_processors: list[LogitsProcessor] | None = None
    truncate_prompt_tokens: int | None = None

    @staticmethod
    def from_optional(n: int | None = 1, presence_penalty: float | None = 0.0,
                      frequency_penalty: float | None = 0.0,
                      repetition_penalty: float | None = 1.0,
                      temperature: float | None = 1.0, top_p: float | None = 1.0,
                      logit_bias: dict | None = None, **kwargs) -> "SamplingParams":
        """vLLM's constructor for API requests: None means the default; logit_bias keys may be
        strings and its values are clamped to [-100, 100] (the OpenAI API's range)."""
        if logit_bias is not None:
            logit_bias = {int(t): min(100.0, max(-100.0, b)) for t, b in logit_bias.items()}
        return SamplingParams(
            n=1 if n is None else n,
            presence_penalty=0.0 if presence_penalty is None else presence_penalty,
            frequency_penalty=0.0 if frequency_penalty is None else frequency_penalty,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p, logit_bias=logit_bias, **kwargs)

    def __post_init__(self) -> None:
        self._normalize()
        check_ranges(self)
        check_not_supported(self)
        if self.use_beam_search:
            self._verify_beam_search()
        else:
            self._verify_non_beam_search()
            if self.temperature < _SAMPLING_EPS:
                # vLLM 0.24: greedy ignores the filters, stored as disabled
                self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
                self._verify_greedy_sampling()
        self._all_stop_token_ids.update(self.stop_token_ids)

    # ------------------------------------------------------------------ normalization

    @property
    def max_n(self) -> int:
        """The largest n (vLLM's VLLM_MAX_N_SEQUENCES, read from the environment as vLLM does)."""
        value = os.environ.get("VLLM_MAX_N_SEQUENCES")
        return int(value) if value else _DEFAULT_MAX_N

    def _normalize(self) -> None:
        """Coerce types and fill derived defaults; rejects values of the wrong type."""
        self.n = check_int("n", self.n)
        self.best_of = check_int("best_of", self.best_of, optional=True)
        if self.best_of is None:
            self.best_of = self.n
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty",
                     "temperature", "top_p", "min_p", "length_penalty"):
            setattr(self, name, check_real(name, getattr(self, name)))
        if 0.0 < self.temperature < _MAX_TEMP:
            logger.warning("temperature %s is less than %s, which may cause numerical errors "
                           "nan or inf in tensors; raised to %s (vLLM's rule).",
                           self.temperature, _MAX_TEMP, _MAX_TEMP)
            self.temperature = _MAX_TEMP
        if not is_int(self.top_k):
            raise TypeError(f"top_k must be an integer, got {describe(self.top_k)}.")
        self.top_k = int(self.top_k)
        self.seed = check_int("seed", self.seed, optional=True)
        if self.seed == -1:
            self.seed = None
        self.max_tokens = check_int("max_tokens", self.max_tokens, optional=True)
        self.min_tokens = check_int("min_tokens", self.min_tokens)
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is True:
                setattr(self, name, 1)
            setattr(self, name, check_int(name, getattr(self, name), optional=True))
        self.truncate_prompt_tokens = check_int(
            "truncate_prompt_tokens", self.truncate_prompt_tokens, optional=True)
        self.routed_experts_prompt_start = check_int("routed_experts_prompt_start",
                                                     self.routed_experts_prompt_start)
        for name in ("use_beam_search", "include_stop_str_in_output", "ignore_eos",
                     "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
                     "flat_logprobs", "skip_clone"):
            check_bool(name, getattr(self, name))
        if self.skip_reading_prefix_cache is not None:
            check_bool("skip_reading_prefix_cache", self.skip_reading_prefix_cache)
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError("early_stopping must be True, False or 'never', got "
                             f"{describe(self.early_stopping)}.")
        if self.thinking_token_budget is not None:
            if not is_int(self.thinking_token_budget) or self.thinking_token_budget < -1:
                raise ValueError("thinking_token_budget must be a non-negative integer or -1 "
                                 f"for unlimited, got {describe(self.thinking_token_budget)}.")
            if self.thinking_token_budget == -1:
                self.thinking_token_budget = None
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(f"output_kind must be a RequestOutputKind (CUMULATIVE, DELTA or "
                             f"FINAL_ONLY), got {describe(self.output_kind)}.")
        if self.structured_outputs is not None and not isinstance(
                self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"structured_outputs must be a StructuredOutputsParams or None, "
                             f"got {describe(self.structured_outputs)}.")
        if self.repetition_detection is not None and not isinstance(
                self.repetition_detection, RepetitionDetectionParams):
            raise ValueError(f"repetition_detection must be a RepetitionDetectionParams or "
                             f"None, got {describe(self.repetition_detection)}.")
        if self.extra_args is not None and not isinstance(self.extra_args, dict):
            raise ValueError(f"extra_args must be a dict or None, got "
                             f"{describe(self.extra_args)}.")

        self.stop = check_str_list("stop", self.stop)
        self.bad_words = check_str_list("bad_words", self.bad_words)
        self.stop_token_ids = check_int_list("stop_token_ids", self.stop_token_ids) or []
        self.allowed_token_ids = check_int_list("allowed_token_ids", self.allowed_token_ids)
        self.logprob_token_ids = check_int_list("logprob_token_ids", self.logprob_token_ids)
        self.logit_bias = check_logit_bias(self.logit_bias)
        if self._bad_words_token_ids is not None:
            if not isinstance(self._bad_words_token_ids, (list, tuple)):
                raise ValueError("_bad_words_token_ids must be a list of token id lists, got "
                                 f"{describe(self._bad_words_token_ids)}.")
            self._bad_words_token_ids = [check_int_list("_bad_words_token_ids", ids,
                                                        optional=False)
                                         for ids in self._bad_words_token_ids]
        if self.stop and not self.include_stop_str_in_output:
            # characters to hold back: they may still become a stop string
            self.output_text_buffer_length = max(len(s) for s in self.stop) - 1
        else:
            self.output_text_buffer_length = 0

        if self.logits_processors is not None:
            if callable(self.logits_processors):
                raise ValueError("logits_processors must be a list of callables, got a single "
                                 "callable; wrap it in a list.")
            if not isinstance(self.logits_processors, (list, tuple)):
                raise ValueError("logits_processors must be a list of callables or None, got "
                                 f"{describe(self.logits_processors)}.")
            processors = list(self.logits_processors)
            for fn in processors:
                if not callable(fn):
                    raise ValueError(f"logits_processors must contain only callables, got "
                                     f"{describe(fn)}.")
            self.logits_processors = processors

    # ------------------------------------------------------------------ per-mode rules

    def _verify_beam_search(self) -> None:
        if self.best_of == 1:
            raise ValueError(f"best_of must be greater than 1 when using beam search (it is the "
                             f"beam width), got {self.best_of}.")
        if self.temperature > _SAMPLING_EPS:
            raise ValueError(f"temperature must be 0 when using beam search, got "
                             f"{self.temperature}.")
        if self.top_p < 1.0 - _SAMPLING_EPS:
            raise ValueError(f"top_p must be 1 when using beam search, got {self.top_p}.")
        if self.top_k not in (-1, 0):
            raise ValueError(f"top_k must be -1 or 0 (disabled) when using beam search, got "
                             f"{self.top_k}.")
        for name in ("structured_outputs", "logit_bias", "allowed_token_ids"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is not supported with use_beam_search=True.")
        if self.bad_words:
            raise ValueError("bad_words is not supported with use_beam_search=True.")
        if self.output_kind is RequestOutputKind.DELTA:
            raise ValueError("output_kind=DELTA is not supported with use_beam_search=True "
                             "(beams change their tokens); use CUMULATIVE or FINAL_ONLY.")

    def _verify_non_beam_search(self) -> None:
        if self.early_stopping is not False:
            raise ValueError("early_stopping is only used with use_beam_search=True; it must be "
                             f"False otherwise, got {self.early_stopping!r}.")
        if not 1.0 - _SAMPLING_EPS < self.length_penalty < 1.0 + _SAMPLING_EPS:
            raise ValueError("length_penalty is only used with use_beam_search=True; it must be "
                             f"1.0 otherwise, got {self.length_penalty}.")

    def _verify_greedy_sampling(self) -> None:
        if self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if self.best_of > 1:
            raise ValueError(f"best_of must be 1 when using greedy sampling (temperature=0), "
                             f"got {self.best_of}; set temperature > 0 to sample several "
                             "candidates.")

    # ------------------------------------------------------------------ engine hooks

    def update_from_generation_config(self, generation_config: dict,
                                      eos_token_id: int | None = None) -> None:
        """vLLM's: remember the primary EOS id, and make generation_config's other EOS ids stop
        ids (unless ignore_eos)."""
        if not self.ignore_eos:
            self._eos_token_id = eos_token_id
        if eos_token_id is not None:
            self._all_stop_token_ids.add(eos_token_id)
        eos_ids = generation_config.get("eos_token_id")
        if eos_ids is None:
            return
        eos_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
        eos_ids.discard(eos_token_id)
        if eos_ids:
            self._all_stop_token_ids.update(eos_ids)
            if not self.ignore_eos:
                self.stop_token_ids = list(eos_ids.union(self.stop_token_ids))

    def update_from_tokenizer(self, tokenizer) -> None:
        """bad_words -> token sequences, as vLLM 0.24 forms them: each word as it is and, when
        that makes another first token of the same length, with a leading space."""
        if not self.bad_words:
            return
        seqs: list[list[int]] = []
        for word in self.bad_words:
            plain = tokenizer.encode(word.lstrip(), add_special_tokens=False)
            seqs.append(plain)
            spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
            if spaced and plain and spaced[0] != plain[0] and len(spaced) == len(plain):
                seqs.append(spaced)
        self._bad_words_token_ids = seqs

    def check_for_model(self, vocab_size: int, tokenizer) -> None:
        """The checks that need the model (vLLM's `verify`): token ids within the vocabulary;
        bad_words tokenized."""
        for name in ("logit_bias", "allowed_token_ids"):
            ids = getattr(self, name)
            bad = [t for t in (ids or []) if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"token_id(s) {bad} in {name} contain out-of-vocab token ids. "
                                 f"Vocabulary size: {vocab_size}")
        if self.bad_words and self._bad_words_token_ids is None:
            if tokenizer is None:
                raise ValueError("bad_words needs a tokenizer (skip_tokenizer_init=False).")
            self.update_from_tokenizer(tokenizer)
        bad = [t for ids in (self._bad_words_token_ids or []) for t in ids
               if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"The model vocabulary size is {vocab_size}, but the following "
                             f"tokens were specified as bad: {bad}.")

    # ------------------------------------------------------------------ derived values

    @property
    def sampling_type(self) -> SamplingType:
        if self.use_beam_search:
            return SamplingType.BEAM
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def all_stop_token_ids(self) -> set[int]:
        return self._all_stop_token_ids

    @property
    def bad_words_token_ids(self) -> list[list[int]] | None:
        return self._bad_words_token_ids

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    def clone(self) -> SamplingParams:
        """A deep copy that shares the logits processors (they may hold models or tokenizers);
        a shallow one with skip_clone=True (vLLM's)."""
        if self.skip_clone:
            return copy.copy(self)
        shared = {id(fn): fn for fn in (self.logits_processors or [])}
        return copy.deepcopy(self, memo=shared)

    def __repr__(self) -> str:
        legacy = ""
        if self.use_beam_search or self.best_of != self.n:
            legacy = (f"best_of={self.best_of}, use_beam_search={self.use_beam_search}, "
                      f"length_penalty={self.length_penalty}, "
                      f"early_stopping={self.early_stopping!r}, ")
        return (f"SamplingParams(n={self.n}, {legacy}presence_penalty={self.presence_penalty}, "
                f"frequency_penalty={self.frequency_penalty}, "
                f"repetition_penalty={self.repetition_penalty}, "
                f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, "
                f"min_p={self.min_p}, seed={self.seed}, stop={self.stop}, "
                f"stop_token_ids={self.stop_token_ids}, bad_words={self.bad_words}, "
                f"thinking_token_budget={self.thinking_token_budget}, "
                f"include_stop_str_in_output={self.include_stop_str_in_output}, "
                f"ignore_eos={self.ignore_eos}, max_tokens={self.max_tokens}, "
                f"min_tokens={self.min_tokens}, logprobs={self.logprobs}, "
                f"prompt_logprobs={self.prompt_logprobs}, "
                f"skip_special_tokens={self.skip_special_tokens}, "
                f"spaces_between_special_tokens={self.spaces_between_special_tokens}, "
                f"structured_outputs={self.structured_outputs}, "
                f"extra_args={self.extra_args})")


@dataclass
class BeamSearchParams:
    """Arguments of `LLM.beam_search`: width, length and the scoring of finished beams."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        self.beam_width = check_int("beam_width", self.beam_width)
        self.max_tokens = check_int("max_tokens", self.max_tokens)
        self.temperature = check_real("temperature", self.temperature)
        self.length_penalty = check_real("length_penalty", self.length_penalty)
        check_bool("ignore_eos", self.ignore_eos)
        check_bool("include_stop_str_in_output", self.include_stop_str_in_output)
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if not self.temperature >= 0.0:
            raise ValueError(
                f"temperature must be non-negative (0 means plain log-probabilities), got "
                f"{self.temperature}.")
        if self.structured_outputs is not None:
            raise ValueError("BeamSearchParams.structured_outputs is not supported by "
                             "runner.engine's beam search yet; leave it None.")

    def clone(self) -> BeamSearchParams:
        return dataclasses.replace(self)
