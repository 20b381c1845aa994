"""Output objects the engine hands back to the user, with vLLM's names, fields and reprs.

Data moves in one direction: the engine's step loop fills a `CompletionOutput` per sequence
(text from the detokenizer, token ids and `Logprob`s from the sampler), groups the n sequences of
a request into a `RequestOutput` (with prompt data and `RequestMetrics`), and `LLM.generate`
returns those in prompt order. The pooling outputs (PoolingRequestOutput, EmbeddingRequestOutput,
...) live in runner/engine/pooling_outputs.py and PoolingParams in runner/engine/pooling_params.py;
both are re-exported here, as vllm.outputs does. `LLM.beam_search` returns `BeamSearchOutput`s of `BeamSearchSequence`s.
These are plain containers: no torch tensors, nothing that needs the engine to read them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Union

logger = logging.getLogger("runner.engine")


@dataclass
class Logprob:
    """Log-probability of one token, its 1-based rank in the vocabulary and its decoded text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per generated token: {token_id: Logprob} for the sampled token and the top-k.
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt token; the first is None because nothing predicts the first token.
PromptLogprobs = list[Union[dict[int, Logprob], None]]


@dataclass
class CompletionOutput:
    """One generated sequence of a request (there are n of them in a RequestOutput).

    finish_reason is "stop" (eos, stop string or stop token) or "length"; stop_reason is the
    stop string or stop token id that ended it, None for eos or length. The fields and their
    positional order are vLLM 0.24's: routed_experts (MoE routing, which no model here has) is
    always None and lora_request None until LoRA exists.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (f"CompletionOutput(index={self.index}, text={self.text!r}, "
                f"token_ids={list(self.token_ids)}, routed_experts={self.routed_experts}, "
                f"cumulative_logprob={self.cumulative_logprob}, logprobs={self.logprobs}, "
                f"finish_reason={self.finish_reason}, stop_reason={self.stop_reason})")


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.time()) of one request's life in the engine."""

    arrival_time: float
    last_token_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    time_in_queue: float | None
    finished_time: float | None = None


class RequestOutput:
    """Everything the engine produced for one prompt: its n completions plus prompt data.

    vLLM 0.24's constructor: the same positional order (request_id, prompt, prompt_token_ids,
    prompt_logprobs, outputs, finished, metrics, lora_request, encoder_prompt,
    encoder_prompt_token_ids, num_cached_tokens), kv_transfer_params by keyword only, and
    unknown keyword arguments (from a newer vLLM) warned about once and dropped, as vLLM's
    forward compatibility does. encoder_* are None (decoder-only models).
    """

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None,
                 prompt_logprobs: PromptLogprobs | None, outputs: list[CompletionOutput],
                 finished: bool, metrics: RequestMetrics | None = None,
                 lora_request: Any = None, encoder_prompt: str | None = None,
                 encoder_prompt_token_ids: list[int] | None = None,
                 num_cached_tokens: int | None = 0, *,
                 kv_transfer_params: dict | None = None, **kwargs: Any) -> None:
        if kwargs:
            _warn_extra_arguments(sorted(kwargs))
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics
        self.lora_request = lora_request
        self.encoder_prompt = encoder_prompt
        self.encoder_prompt_token_ids = encoder_prompt_token_ids
        self.num_cached_tokens = num_cached_tokens
        self.kv_transfer_params = kv_transfer_params

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestOutput) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return (f"RequestOutput(request_id={self.request_id}, prompt={self.prompt!r}, "
                f"prompt_token_ids={self.prompt_token_ids}, "
                f"encoder_prompt={self.encoder_prompt!r}, "
                f"encoder_prompt_token_ids={self.encoder_prompt_token_ids}, "
                f"prompt_logprobs={self.prompt_logprobs}, outputs={self.outputs}, "
                f"finished={self.finished}, metrics={self.metrics}, "
                f"lora_request={self.lora_request}, "
                f"num_cached_tokens={self.num_cached_tokens})")


_WARNED_EXTRA: set = set()     # which extra-argument sets were warned about (once each)


def _warn_extra_arguments(names: list[str]) -> None:
    key = tuple(names)
    if key not in _WARNED_EXTRA:
        _WARNED_EXTRA.add(key)
        logger.warning("RequestOutput: ignoring extra arguments %s (from a newer vLLM's API)",
                       names)


@dataclass
class BeamSearchSequence:
    """One beam: all its tokens (prompt included, as in vLLM), per-token logprobs and score."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class BeamSearchOutput:
    """What `LLM.beam_search` returns per prompt: the best beam_width sequences, best first."""

    sequences: list[BeamSearchSequence]


# pooling models' outputs and params, importable from here as from vllm.outputs
from runner.engine.pooling_outputs import (ClassificationOutput,  # noqa: E402,F401
                                           ClassificationRequestOutput, EmbeddingOutput,
                                           EmbeddingRequestOutput, PoolingOutput,
                                           PoolingRequestOutput, ScoringOutput,
                                           ScoringRequestOutput)
from runner.engine.pooling_params import PoolingParams  # noqa: E402,F401
