"""The OpenAI-compatible wire format: request bodies -> SamplingParams, outputs -> JSON.

    JSON body -> parse_completion_request / parse_chat_request
        -> prompts (text or token ids) + SamplingParams (server defaults from the sampling
           preset, overlaid with the request's fields, validated by SamplingParams itself)
    RequestOutput -> completion_response / chat_response (whole answer)
                  -> DeltaTracker -> completion_chunk / chat_chunk (server-sent events)

Every bad request raises `APIError(status, message, param)`; the server turns it into
OpenAI's error body `{"error": {"message", "type", "param", "code"}}`. SamplingParams'
ValueErrors name the field first ("top_p must be 1 when using beam search ..."), which
becomes `param`.
"""
from __future__ import annotations

import base64
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from runner.engine import SamplingParams

# Request fields that map one to one onto SamplingParams (OpenAI's and vLLM's extras).
SAMPLING_FIELDS = (
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "temperature", "top_p", "top_k", "min_p", "seed", "use_beam_search", "length_penalty",
    "early_stopping", "stop", "stop_token_ids", "include_stop_str_in_output", "ignore_eos",
    "max_tokens", "min_tokens", "prompt_logprobs", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens")
# Fields the server reads itself; anything else a client sends is accepted and ignored,
# as vLLM's server does (OpenAI clients send `user`, `metadata`, ...), except the ones below.
COMMON_FIELDS = {"model", "stream", "stream_options", "user", "return_token_ids",
                 "add_special_tokens"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "logprobs", "echo", "suffix", "logit_bias"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "logprobs", "top_logprobs", "max_completion_tokens",
                               "add_generation_prompt", "logit_bias", "tools", "tool_choice",
                               "response_format", "chat_template_kwargs"}
# Accepted by OpenAI but not implemented here: a non-default value is refused, never ignored.
UNSUPPORTED = {"suffix": (None, ""), "logit_bias": (None, {}), "tools": (None, []),
               "tool_choice": (None, "none", "auto"), "response_format": (None, {"type": "text"})}

_FIELD_RE = re.compile(r"^([a-z_]+)\b")


class APIError(Exception):
    """An error the client caused (4xx) or the server's state (503), in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type_: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or {400: "BadRequestError", 401: "AuthenticationError",
                              404: "NotFoundError", 503: "ServiceUnavailableError"}.get(
            status, "InternalServerError")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


def bad_request(exc: Exception, fields: tuple = ()) -> APIError:
    """A ValueError from SamplingParams / add_request as a 400 naming the field."""
    msg = str(exc)
    m = _FIELD_RE.match(msg)
    known = set(fields) | set(SAMPLING_FIELDS) | {"logprobs", "prompt", "messages", "input"}
    param = m.group(1) if m and m.group(1) in known else None
    if param is None and "max_model_len" in msg:
        param = "prompt"
    return APIError(400, msg, param)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass
class GenerationRequest:
    """What a completion or chat request asks of the engine, after validation."""

    model: str
    prompts: list  # str (text) or list[int] (token ids), one request each
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    add_special_tokens: bool = True
    echo: bool = False
    return_token_ids: bool = False
    top_logprobs: Optional[int] = None  # chat: how many alternatives per token
    extra: dict = field(default_factory=dict)


def _expect(body: dict, name: str, types: tuple, what: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool)
                              and bool not in types):
        raise APIError(400, f"{name} must be {what}, got {type(value).__name__}.", name)
    return value


def _check_unsupported(body: dict) -> None:
    for name, allowed in UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            raise APIError(400, f"{name} is not supported by this server.", name)


def _model_name(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "model is required: the name of a served model (GET /v1/models).",
                       "model")
    return model


def _sampling_params(body: dict, defaults: dict, overrides: dict) -> SamplingParams:
    values = dict(defaults)
    for name in SAMPLING_FIELDS:
        if body.get(name) is not None:
            values[name] = body[name]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SamplingParams(**values)
    except (ValueError, TypeError) as exc:
        raise bad_request(exc) from None


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = bool(_expect(body, "stream", (bool,), "true or false"))
    opts = _expect(body, "stream_options", (dict,), "an object") or {}
    if opts and not stream:
        raise APIError(400, "stream_options is only allowed with stream=true.", "stream_options")
    return stream, bool(opts.get("include_usage", False))


def _prompts(value: Any, name: str) -> list:
    """str | list[str] | list[int] | list[list[int]] -> list of str / list[int]."""
    def is_ids(x):
        return isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool)
                                                 for t in x)
    if isinstance(value, str):
        return [value]
    if is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) or is_ids(p) for p in value):
        return list(value)
    raise APIError(400, f"{name} must be a string, a list of strings, a list of token ids or a "
                        "list of token-id lists (non-empty).", name)


def parse_completion_request(body: dict, defaults: dict) -> GenerationRequest:
    _check_unsupported(body)
    model = _model_name(body)
    if "prompt" not in body:
        raise APIError(400, "prompt is required.", "prompt")
    prompts = _prompts(body["prompt"], "prompt")
    stream, include_usage = _stream_flags(body)
    logprobs = _expect(body, "logprobs", (int,), "an int or null")
    echo = bool(_expect(body, "echo", (bool,), "true or false"))
    params = _sampling_params(body, defaults, {"logprobs": logprobs})
    if echo and stream:
        raise APIError(400, "echo is not supported with stream=true.", "echo")
    return GenerationRequest(model, prompts, params, stream, include_usage,
                             add_special_tokens=body.get("add_special_tokens", True) is not False,
                             echo=echo, return_token_ids=bool(body.get("return_token_ids")))


def parse_chat_request(body: dict, defaults: dict) -> GenerationRequest:
    _check_unsupported(body)
    model = _model_name(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects.",
                       "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, "each message needs a string role and content.", "messages")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: only text is supported
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise APIError(400, "only text content parts are supported.", "messages")
        elif content is not None and not isinstance(content, str):
            raise APIError(400, "message content must be a string or a list of text parts.",
                           "messages")
    stream, include_usage = _stream_flags(body)
    want_logprobs = bool(_expect(body, "logprobs", (bool,), "true or false"))
    top = _expect(body, "top_logprobs", (int,), "an int or null")
    if top is not None and not want_logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true.", "top_logprobs")
    max_tokens = _expect(body, "max_completion_tokens", (int,), "an int or null")
    overrides = {"logprobs": (top or 0) if want_logprobs else None}
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens
    try:
        params = _sampling_params(body, defaults, overrides)
    except APIError as e:
        if e.param == "logprobs":
            e.param = "top_logprobs"
        raise
    return GenerationRequest(model, [], params, stream, include_usage, add_special_tokens=False,
                             return_token_ids=bool(body.get("return_token_ids")),
                             top_logprobs=top if want_logprobs else None,
                             extra={"messages": messages,
                                    "add_generation_prompt": body.get("add_generation_prompt",
                                                                      True),
                                    "chat_template_kwargs": body.get("chat_template_kwargs")
                                    or {}})


def render_chat(tokenizer: Any, req: GenerationRequest) -> str:
    """The chat prompt text, as vLLM's server renders it (tokenized without extra specials)."""
    messages = []
    for m in req.extra["messages"]:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        messages.append({**m, "content": content or ""})
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise APIError(400, "this model has no chat template; use /v1/completions.", "messages")
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=bool(req.extra["add_generation_prompt"]),
            **req.extra["chat_template_kwargs"])
    except Exception as exc:  # a template that rejects these messages (roles, order)
        raise APIError(400, f"the chat template rejected the messages: {exc}", "messages") from None


# ---------------------------------------------------------------------------------------------
# Responses


def usage(outputs: list) -> dict:
    prompt = sum(len(o.prompt_token_ids or []) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _token_text(lp_entry: dict, token_id: int, tokenizer: Any) -> str:
    lp = lp_entry.get(token_id)
    if lp is not None and getattr(lp, "decoded_token", None) is not None:
        return lp.decoded_token
    return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"


def completion_logprobs(token_ids: list, logprobs: list, tokenizer: Any, offset: int = 0) -> dict:
    """OpenAI's completions logprobs object for the tokens `token_ids` (parallel lists)."""
    tokens, token_lps, tops, offsets = [], [], [], []
    pos = offset
    for tid, entry in zip(token_ids, logprobs):
        text = _token_text(entry, tid, tokenizer)
        tokens.append(text)
        token_lps.append(float(entry[tid].logprob) if tid in entry else None)
        tops.append({_token_text(entry, t, tokenizer): float(lp.logprob)
                     for t, lp in entry.items()})
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(token_ids: list, logprobs: list, tokenizer: Any, top: int) -> dict:
    content = []
    for tid, entry in zip(token_ids, logprobs):
        text = _token_text(entry, tid, tokenizer)
        alts = sorted(((t, lp) for t, lp in entry.items() if lp.rank is not None),
                      key=lambda x: x[1].rank)[:top]
        content.append({
            "token": text, "logprob": float(entry[tid].logprob) if tid in entry else None,
            "bytes": list(text.encode()),
            "top_logprobs": [{"token": _token_text(entry, t, tokenizer),
                              "logprob": float(lp.logprob),
                              "bytes": list(_token_text(entry, t, tokenizer).encode())}
                             for t, lp in alts]})
    return {"content": content}


def completion_response(req: GenerationRequest, outputs: list, tokenizer: Any,
                        request_id: str) -> dict:
    n = req.params.n
    choices = []
    for i, out in enumerate(outputs):
        for c in out.outputs:
            prefix = (out.prompt or "") if req.echo else ""
            choice = {"index": i * n + c.index, "text": prefix + c.text,
                      "logprobs": None, "finish_reason": c.finish_reason,
                      "stop_reason": c.stop_reason}
            if req.params.logprobs is not None and c.logprobs is not None:
                choice["logprobs"] = completion_logprobs(c.token_ids, c.logprobs, tokenizer,
                                                         len(prefix))
            if req.return_token_ids:
                choice["token_ids"] = list(c.token_ids)
                choice["prompt_token_ids"] = list(out.prompt_token_ids or [])
            choices.append(choice)
    return {"id": request_id, "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": choices, "usage": usage(outputs)}


def chat_response(req: GenerationRequest, out: Any, tokenizer: Any, request_id: str) -> dict:
    choices = []
    for c in out.outputs:
        choice = {"index": c.index, "message": {"role": "assistant", "content": c.text},
                  "logprobs": None, "finish_reason": c.finish_reason,
                  "stop_reason": c.stop_reason}
        if req.top_logprobs is not None and c.logprobs is not None:
            choice["logprobs"] = chat_logprobs(c.token_ids, c.logprobs, tokenizer,
                                               req.top_logprobs)
        if req.return_token_ids:
            choice["token_ids"] = list(c.token_ids)
        choices.append(choice)
    body = {"id": request_id, "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "choices": choices, "usage": usage([out])}
    if req.return_token_ids:
        body["prompt_token_ids"] = list(out.prompt_token_ids or [])
    return body


class DeltaTracker:
    """What of each choice's text / tokens the client has already been sent."""

    def __init__(self) -> None:
        self.text_len: dict[int, int] = {}
        self.num_tokens: dict[int, int] = {}
        self.finished: set[int] = set()

    def delta(self, c: Any, finished: bool) -> Optional[tuple[str, int, int]]:
        """(new text, first new token index, end token index) of CompletionOutput c, or None
        when there is nothing to send yet (tokens whose text the detokenizer holds back)."""
        start = self.text_len.get(c.index, 0)
        text = c.text[start:] if len(c.text) >= start else ""
        if not text and not finished:
            return None
        self.text_len[c.index] = max(start, len(c.text))
        t0 = self.num_tokens.get(c.index, 0)
        n = len(c.logprobs) if c.logprobs is not None else len(c.token_ids)
        self.num_tokens[c.index] = max(t0, n)
        if finished:
            self.finished.add(c.index)
        return text, t0, max(t0, n)


def sse(data: Any) -> bytes:
    import json
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------
# Embeddings


def parse_embedding_request(body: dict) -> tuple[str, list, Optional[int], str]:
    model = _model_name(body)
    if "input" not in body:
        raise APIError(400, "input is required.", "input")
    inputs = _prompts(body["input"], "input")
    dims = _expect(body, "dimensions", (int,), "an int or null")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise APIError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}.",
                       "encoding_format")
    return model, inputs, dims, fmt


def embedding_response(model: str, outputs: list, fmt: str) -> dict:
    data = []
    tokens = 0
    for i, out in enumerate(outputs):
        vec = [float(x) for x in out.outputs.embedding]
        tokens += len(getattr(out, "prompt_token_ids", None) or [])
        emb: Any = vec
        if fmt == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
