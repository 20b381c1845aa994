"""Request bodies -> what the engine is asked: prompts plus SamplingParams fields.

    parsed body (runner/serve/limits.py) -> schema.validate(the endpoint's table: types,
        bounds, unknown fields) -> parse_completion / parse_chat
    -> GenerationRequest: prompts (text or token ids), `values` (the sampling preset overlaid
       with the request's fields, checked once as SamplingParams so a broken rule is a 400
       before any tokenizing), flags (echo, stream, return_token_ids, ...)
    -> after tokenization (runner/serve/prompts.py) params_for(prompt_len): the SamplingParams
       of one prompt, max_tokens fitted as vLLM fits it (an explicit max_tokens that does not
       fit next to the prompt is a 400; the default is clamped to what fits)

Echo with logprobs asks for prompt logprobs (as many alternatives as `logprobs`, unless
`prompt_logprobs` says otherwise); `max_tokens: 0` with echo generates one token that the
response leaves out, so the answer is the prompt part alone (what lm-eval's loglikelihood
sends).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from runner.engine import SamplingParams
from runner.serve.errors import APIError, bad_request

# Request fields that map one to one onto SamplingParams.
SAMPLING_FIELDS = (
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "temperature", "top_p", "top_k", "min_p", "seed", "use_beam_search", "length_penalty",
    "early_stopping", "stop", "stop_token_ids", "include_stop_str_in_output", "ignore_eos",
    "max_tokens", "min_tokens", "prompt_logprobs", "skip_special_tokens",
    "spaces_between_special_tokens", "logit_bias", "allowed_token_ids", "bad_words")


@dataclass
class ChatInput:
    messages: list
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None       # the client's own (gated by the server)
    chat_template_kwargs: dict = field(default_factory=dict)


@dataclass
class GenerationRequest:
    """A completion or chat request after validation, before tokenization."""

    model: Optional[str]
    prompts: list                      # str (text) or list[int] (token ids), one request each
    values: dict                       # SamplingParams keyword arguments
    params: SamplingParams             # `values` checked (max_tokens as requested)
    explicit_max_tokens: bool = False
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    add_special_tokens: bool = True
    echo: bool = False
    echo_only: bool = False            # max_tokens=0 with echo: the prompt part alone
    return_token_ids: bool = False
    tokens_as_ids: bool = False        # return_tokens_as_token_ids
    truncate_prompt_tokens: Optional[int] = None
    top_logprobs: Optional[int] = None  # chat: alternatives per token
    request_id: Optional[str] = None   # the client's base id (vLLM's request_id)
    chat: Optional[ChatInput] = None
    known_fields: frozenset = frozenset()

    @property
    def want_logprobs(self) -> bool:
        return self.params.logprobs is not None

    def params_for(self, prompt_len: int, max_model_len: int) -> SamplingParams:
        """The SamplingParams of one prompt of prompt_len tokens."""
        room = max_model_len - prompt_len
        max_tokens = self.values.get("max_tokens")
        if self.echo_only:
            max_tokens = 1
        elif self.explicit_max_tokens:
            if max_tokens > room:
                raise APIError(400, f"This model's maximum context length is {max_model_len} "
                                    f"tokens. However, you requested {max_tokens} output tokens "
                                    f"and your prompt contains {prompt_len} input tokens, for "
                                    f"a total of {prompt_len + max_tokens} tokens. Reduce the "
                                    "prompt or max_tokens.", "max_tokens")
        elif max_tokens is None or max_tokens > room:
            max_tokens = room
        if max_tokens == self.params.max_tokens:
            return self.params
        return dataclasses.replace(self.params, max_tokens=max_tokens)


def _stream_flags(f: dict) -> tuple[bool, bool, bool]:
    stream = f.get("stream", False)
    opts = f.get("stream_options")
    if opts is not None and not stream:
        raise APIError(400, "stream_options is only allowed with stream=true.", "stream_options")
    opts = opts or {}
    return stream, bool(opts.get("include_usage")), bool(opts.get("continuous_usage_stats"))


def _sampling_params(values: dict, known: frozenset) -> SamplingParams:
    try:
        return SamplingParams(**values)
    except (ValueError, TypeError) as exc:
        raise bad_request(exc, known) from None


def _values(f: dict, defaults: dict, sampling_fields: frozenset) -> dict:
    values = {k: v for k, v in defaults.items() if k in sampling_fields}
    for name in SAMPLING_FIELDS:
        if name in f:
            values[name] = f[name]
    for name in ("logit_bias", "allowed_token_ids"):
        if name in values and not values[name] and name not in sampling_fields:
            values.pop(name)  # {} / []: the only values an engine without the field takes
    if values.get("logit_bias"):
        values["logit_bias"] = _logit_bias(values["logit_bias"])
    values.pop("truncate_prompt_tokens", None)  # the server truncates (runner/serve/prompts.py)
    structured = _structured_outputs(f)
    if structured is not None:
        values["structured_outputs"] = structured
    return values


def _structured_outputs(f: dict):
    """`structured_outputs` and OpenAI's `response_format` -> one StructuredOutputsParams, as
    vLLM 0.24 merges them (response_format's constraint replaces the same kind; two kinds at
    once is a 400 from StructuredOutputsParams' own check)."""
    from runner.engine.sampling_params import StructuredOutputsParams

    so = dict(f.get("structured_outputs") or {})
    rf = f.get("response_format") or {}
    kind = rf.get("type", "text")
    if kind == "json_object":
        so["json_object"] = True
    elif kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if schema is None:
            raise APIError(400, "response_format of type json_schema needs json_schema.schema "
                                "(the JSON schema the output must follow).", "response_format")
        so["json"] = schema
    if not so:
        return None
    try:
        return StructuredOutputsParams(**so)
    except (ValueError, TypeError) as exc:
        param = "structured_outputs" if f.get("structured_outputs") else "response_format"
        raise APIError(400, f"{param}: {exc}", param) from None


def _logit_bias(bias: dict) -> dict:
    """OpenAI's {"token id": bias} (JSON keys are strings) -> {int: float}."""
    out = {}
    for k, v in bias.items():
        if not (k.isdigit() and k.isascii()):
            raise APIError(400, f"logit_bias keys must be token ids, got {k!r}.", "logit_bias")
        out[int(k)] = float(v)
    return out


def _truncate(f: dict) -> Optional[int]:
    t = f.get("truncate_prompt_tokens")
    return t if t is not None and t != 0 else None


def parse_completion(f: dict, defaults: dict, sampling_fields: frozenset,
                     known: frozenset) -> GenerationRequest:
    """A validated /v1/completions body (schema.validate) -> GenerationRequest."""
    stream, include_usage, continuous = _stream_flags(f)
    prompt = f["prompt"]
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) \
        else list(prompt)
    echo = f.get("echo", False)
    values = _values(f, defaults, sampling_fields)
    if f.get("max_tokens") == 0:
        if not echo:
            raise APIError(400, "max_tokens must be at least 1 (0 only with echo=true, which "
                                "returns the prompt part alone).", "max_tokens")
        values["max_tokens"] = 1
    logprobs = f.get("logprobs")
    if logprobs is not None:
        values["logprobs"] = logprobs
    if echo and values.get("logprobs") is not None and "prompt_logprobs" not in f:
        values["prompt_logprobs"] = values["logprobs"]
    if stream and f.get("prompt_logprobs") is not None:
        raise APIError(400, "prompt_logprobs are not available with stream=true.",
                       "prompt_logprobs")
    params = _sampling_params(values, known)
    return GenerationRequest(
        model=f.get("model"), prompts=prompts, values=values, params=params,
        explicit_max_tokens="max_tokens" in f, stream=stream, include_usage=include_usage,
        continuous_usage=continuous, add_special_tokens=f.get("add_special_tokens", True),
        echo=echo, echo_only=echo and f.get("max_tokens") == 0,
        return_token_ids=f.get("return_token_ids", False),
        tokens_as_ids=f.get("return_tokens_as_token_ids", False),
        truncate_prompt_tokens=_truncate(f), request_id=f.get("request_id"), known_fields=known)


def parse_chat(f: dict, defaults: dict, sampling_fields: frozenset,
               known: frozenset) -> GenerationRequest:
    """A validated /v1/chat/completions body -> GenerationRequest (its prompt is rendered
    later, runner/serve/chat_render.py)."""
    stream, include_usage, continuous = _stream_flags(f)
    want = f.get("logprobs", False)
    top = f.get("top_logprobs")
    if top is not None and not want:
        raise APIError(400, "top_logprobs needs logprobs=true.", "top_logprobs")
    if f.get("add_generation_prompt", True) and f.get("continue_final_message", False):
        raise APIError(400, "continue_final_message=true needs add_generation_prompt=false.",
                       "continue_final_message")
    if stream and f.get("prompt_logprobs") is not None:
        raise APIError(400, "prompt_logprobs are not available with stream=true.",
                       "prompt_logprobs")
    values = _values(f, defaults, sampling_fields)
    max_tokens = f.get("max_completion_tokens", f.get("max_tokens"))
    if max_tokens is not None:
        values["max_tokens"] = max_tokens
    if want:
        values["logprobs"] = top or 0
    try:
        params = _sampling_params(values, known)
    except APIError as e:
        if e.param == "logprobs":
            e.param = "top_logprobs"
        raise
    kwargs = dict(f.get("chat_template_kwargs") or {})
    template = f.get("chat_template")
    if kwargs.get("chat_template") is not None:
        template = template or kwargs["chat_template"]
    kwargs.pop("chat_template", None)
    chat = ChatInput(messages=f["messages"],
                     add_generation_prompt=f.get("add_generation_prompt", True),
                     continue_final_message=f.get("continue_final_message", False),
                     chat_template=template, chat_template_kwargs=kwargs)
    return GenerationRequest(
        model=f.get("model"), prompts=[], values=values, params=params,
        explicit_max_tokens=max_tokens is not None, stream=stream, include_usage=include_usage,
        continuous_usage=continuous, add_special_tokens=f.get("add_special_tokens", False),
        return_token_ids=f.get("return_token_ids", False),
        truncate_prompt_tokens=_truncate(f), top_logprobs=top if want else None,
        request_id=f.get("request_id"), chat=chat, known_fields=known)


def hold_partial(req: GenerationRequest) -> bool:
    """Beam search and best_of > n choose their outputs only at the end: stream those whole."""
    p = req.params
    return bool(p.use_beam_search) or (p.best_of or p.n) > p.n
