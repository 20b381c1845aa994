"""/openapi.json: every route, every request field with its type and bounds, every response.

    ServerState.tables (runner/serve/request_fields.py: the same Field specs the validator
    enforces) -> schema.body_schema -> components.schemas.<Endpoint>Request
    + the response shapes below (what runner/serve/responses.py writes) + OpenAI's error body
    for each refusal status -> an OpenAPI 3.1 document

Bounds that depend on the model or the server (vocabulary size, max_model_len, max_logprobs,
serve.max_n, ...) are the served values, so a client or a fuzzer (tests/serve: schemathesis)
can read the limits from here.
"""
from __future__ import annotations

from typing import Any

from runner.serve.schema import body_schema

_NULL = {"type": "null"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, _NULL]}


def _obj(props: dict, required: tuple = (), extra: Any = True) -> dict:
    return {"type": "object", "properties": props, "required": list(required or props),
            "additionalProperties": extra}


_INT, _NUM, _STR = {"type": "integer"}, {"type": "number"}, {"type": "string"}
_IDS = {"type": "array", "items": _INT}
_USAGE = _obj({"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT})
_STOP_REASON = {"anyOf": [_STR, _INT, _NULL]}
_FINISH = {"anyOf": [_STR, _NULL]}
_LOGPROB = _obj({"logprob": _NUM, "rank": {"anyOf": [_INT, _NULL]},
                 "decoded_token": {"anyOf": [_STR, _NULL]}})
_PROMPT_LOGPROBS = _nullable({"type": "array", "items": {"anyOf": [
    _NULL, {"type": "object", "additionalProperties": _LOGPROB}]}})
_COMPLETION_LOGPROBS = _obj({
    "text_offset": {"type": "array", "items": _INT},
    "token_logprobs": {"type": "array", "items": {"anyOf": [_NUM, _NULL]}},
    "tokens": {"type": "array", "items": _STR},
    "top_logprobs": {"type": "array", "items": {"anyOf": [
        {"type": "object", "additionalProperties": _NUM}, _NULL]}}})
_TOP = _obj({"token": _STR, "logprob": _NUM, "bytes": {"type": "array", "items": _INT}})
_CHAT_LOGPROBS = _obj({"content": {"type": "array", "items": _obj({
    "token": _STR, "logprob": _NUM, "bytes": {"type": "array", "items": _INT},
    "top_logprobs": {"type": "array", "items": _TOP}})}})

RESPONSES = {
    "ErrorResponse": _obj({"error": _obj({
        "message": _STR, "type": _STR, "param": {"anyOf": [_STR, _NULL]}, "code": _INT})}),
    "CompletionResponse": _obj({
        "id": _STR, "object": {"const": "text_completion"}, "created": _INT, "model": _STR,
        "choices": {"type": "array", "items": _obj({
            "index": _INT, "text": _STR, "logprobs": _nullable(_COMPLETION_LOGPROBS),
            "finish_reason": _FINISH, "stop_reason": _STOP_REASON,
            "prompt_logprobs": _PROMPT_LOGPROBS, "token_ids": _IDS,
            "prompt_token_ids": _IDS},
            required=("index", "text", "logprobs", "finish_reason"))},
        "usage": _USAGE}),
    "ChatCompletionResponse": _obj({
        "id": _STR, "object": {"const": "chat.completion"}, "created": _INT, "model": _STR,
        "choices": {"type": "array", "items": _obj({
            "index": _INT,
            "message": _obj({"role": {"const": "assistant"}, "content": _STR}),
            "logprobs": _nullable(_CHAT_LOGPROBS), "finish_reason": _FINISH,
            "stop_reason": _STOP_REASON, "token_ids": _IDS},
            required=("index", "message", "logprobs", "finish_reason"))},
        "usage": _USAGE, "prompt_logprobs": _PROMPT_LOGPROBS, "prompt_token_ids": _IDS},
        required=("id", "object", "created", "model", "choices", "usage")),
    "EmbeddingResponse": _obj({
        "object": {"const": "list"}, "model": _STR,
        "data": {"type": "array", "items": _obj({
            "object": {"const": "embedding"}, "index": _INT,
            "embedding": {"anyOf": [{"type": "array", "items": _NUM}, _STR]}})},
        "usage": _obj({"prompt_tokens": _INT, "total_tokens": _INT})}),
    "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _obj({
        "id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR,
        "root": {"anyOf": [_STR, _NULL]}, "parent": {"anyOf": [_STR, _NULL]},
        "max_model_len": _INT, "permission": {"type": "array"}},
        required=("id", "object", "created", "owned_by", "max_model_len"))}}),
    "TokenizeResponse": _obj({"count": _INT, "max_model_len": _INT, "tokens": _IDS,
                              "token_strs": _nullable({"type": "array", "items": _STR})}),
    "DetokenizeResponse": _obj({"prompt": _STR}),
    "VersionResponse": _obj({"version": _STR}),
    "TokenizerInfoResponse": {"type": "object", "required": ["tokenizer_class"],
                              "properties": {"tokenizer_class": _STR}},
}

_REFUSALS = {"400": "A malformed or out-of-range request; `param` names the field.",
             "401": "A missing or wrong API key.", "404": "An unknown model.",
             "413": "The body is larger than serve.max_body_bytes.",
             "500": "The engine failed on this request (the message names its id).",
             "503": "Shutting down or overloaded."}

# One server-sent event (OpenAPI 3.2's itemSchema): `data` is a chunk's JSON, an error body,
# or the last event's [DONE].
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": _STR, "event": _STR, "id": _STR, "retry": _INT}}
_SSE = {"text/event-stream": {"itemSchema": _SSE_EVENT}}


def _errors(*codes: str) -> dict:
    return {c: {"description": _REFUSALS[c],
                "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
            for c in codes}


def _ok(schema: str, stream: bool = False, description: str = "OK") -> dict:
    content = {"application/json": {"schema": _ref(schema)}}
    if stream:
        content.update(_SSE)
        description += " (stream=true: server-sent events ending with `data: [DONE]`)"
    return {"200": {"description": description, "content": content}}


def _post(summary: str, request: str, response: str, stream: bool = False,
          one_of: tuple = ()) -> dict:
    schema = {"oneOf": [_ref(r) for r in one_of]} if one_of else _ref(request)
    return {"post": {
        "summary": summary, "operationId": summary.split()[0].lower() + "_" + request.lower(),
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {**_ok(response, stream), **_errors("400", "401", "404", "413", "500",
                                                          "503")}}}


def _get(summary: str, response: dict, op: str) -> dict:
    return {"get": {"summary": summary, "operationId": op,
                    "responses": {**response, **_errors("401", "503")}}}


def openapi_document(state: Any) -> dict:
    t = state.tables
    schemas = {
        "CompletionRequest": body_schema(t["completions"]),
        "ChatCompletionRequest": body_schema(t["chat"]),
        "EmbeddingRequest": body_schema(t["embeddings"]),
        "TokenizeCompletionRequest": body_schema(t["tokenize"]),
        "TokenizeChatRequest": body_schema(t["tokenize_chat"]),
        "DetokenizeRequest": body_schema(t["detokenize"]),
        **RESPONSES,
    }
    paths = {
        "/v1/completions": _post("Create a completion", "CompletionRequest",
                                 "CompletionResponse", stream=True),
        "/v1/chat/completions": _post("Create a chat completion", "ChatCompletionRequest",
                                      "ChatCompletionResponse", stream=True),
        "/v1/embeddings": _post("Create embeddings", "EmbeddingRequest", "EmbeddingResponse"),
        "/tokenize": _post("Tokenize text or chat messages", "TokenizeRequest",
                           "TokenizeResponse",
                           one_of=("TokenizeCompletionRequest", "TokenizeChatRequest")),
        "/detokenize": _post("Detokenize token ids", "DetokenizeRequest",
                             "DetokenizeResponse"),
        "/v1/models": _get("List the served models", _ok("ModelList"), "list_models"),
        "/version": _get("The server's version", _ok("VersionResponse"), "version"),
        "/health": {"get": {"summary": "200 while the engine runs (no API key needed)",
                            "operationId": "health", "security": [],
                            "responses": {"200": {"description": "healthy"},
                                          **_errors("503")}}},
        "/metrics": _get("Prometheus metrics (vLLM's names)", {"200": {
            "description": "Prometheus text format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, "metrics"),
        "/openapi.json": _get("This document", {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": {"type": "object"}}}}}, "openapi"),
    }
    if state.cfg.enable_tokenizer_info_endpoint:
        paths["/tokenizer_info"] = _get("The tokenizer's configuration",
                                        _ok("TokenizerInfoResponse"), "tokenizer_info")
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "runner.serve", "version": _version(),
                 "description": "OpenAI-compatible API over the runner's engine (vLLM's "
                                "extra fields included); docs/serve.md."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if state.api_key_digest is not None:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                           "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runner")
    except PackageNotFoundError:
        return "dev"
