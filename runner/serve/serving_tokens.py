"""vLLM's tokenizer endpoints: POST /tokenize, POST /detokenize, GET /tokenizer_info.

    /tokenize   {"prompt": text, add_special_tokens=true} or {"messages": [...], ...} (the chat
                template first, add_special_tokens=false) -> {"count", "max_model_len",
                "tokens", "token_strs"}
    /detokenize {"tokens": [...]} -> {"prompt": text}
    /tokenizer_info (only with serve.enable_tokenizer_info_endpoint, as vLLM gates it): the
                tokenizer's configuration and chat template, which lm-eval's remote tokenizer
                reads (eos_token, bos_token, ...)

Tokenizing runs in the server's tokenizer thread (runner/serve/prompts.py), never on the event
loop or the engine thread.
"""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runner.serve.chat_render import render_chat
from runner.serve.errors import APIError
from runner.serve.protocol import ChatInput
from runner.serve.state import ServerState


def _tokenizer(state: ServerState, param: str) -> Any:
    if state.tokenizer is None:
        raise APIError(400, "this server has no tokenizer (skip_tokenizer_init).", param)
    return state.tokenizer


async def tokenize(request: Request) -> Response:
    state: ServerState = request.app.state.server
    body = await state.read_body(request)
    chat = "messages" in body
    f = await state.read_request(request, "tokenize_chat" if chat else "tokenize", body)
    state.check_model(f.get("model"))
    tok = _tokenizer(state, "messages" if chat else "prompt")
    if chat:
        if f.get("add_generation_prompt", True) and f.get("continue_final_message", False):
            raise APIError(400, "continue_final_message=true needs add_generation_prompt=false.",
                           "continue_final_message")
        kwargs = dict(f.get("chat_template_kwargs") or {})
        template = f.get("chat_template") or kwargs.pop("chat_template", None)
        kwargs.pop("chat_template", None)
        cfg = state.cfg
        text = await render_chat(tok, ChatInput(
            messages=f["messages"], add_generation_prompt=f.get("add_generation_prompt", True),
            continue_final_message=f.get("continue_final_message", False),
            chat_template=template, chat_template_kwargs=kwargs),
            allow_request_template=cfg.allow_request_chat_template,
            timeout=cfg.chat_template_timeout, max_memory_mb=cfg.chat_template_max_memory_mb)
        if len(text) > cfg.max_tokenize_chars:
            raise APIError(400, f"the rendered messages have {len(text)} characters, more than "
                                f"{cfg.max_tokenize_chars} (serve.max_tokenize_chars).",
                           "messages")
        ids = (await state.prompts.encode([text], f.get("add_special_tokens", False)))[0]
    else:
        ids = (await state.prompts.encode([f["prompt"]], f.get("add_special_tokens", True)))[0]
    strs = tok.convert_ids_to_tokens(ids) if f.get("return_token_strs") else None
    return JSONResponse({"count": len(ids), "max_model_len": state.max_model_len,
                         "tokens": ids, "token_strs": strs})


async def detokenize(request: Request) -> Response:
    state: ServerState = request.app.state.server
    f = await state.read_request(request, "detokenize")
    state.check_model(f.get("model"))
    _tokenizer(state, "tokens")
    return JSONResponse({"prompt": await state.prompts.decode(list(f["tokens"]))})


def _plain(value: Any) -> Any:
    """Tokenizer config values as JSON (AddedToken -> its text; anything else odd -> str)."""
    if hasattr(value, "content") and isinstance(getattr(value, "content"), str):
        return value.content
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


async def tokenizer_info(request: Request) -> Response:
    state: ServerState = request.app.state.server
    tok = _tokenizer(state, None)
    info = _plain(dict(getattr(tok, "init_kwargs", None) or {}))
    for key in ("vocab_file", "merges_file", "tokenizer_file", "name_or_path"):
        info.pop(key, None)  # file paths of the server's machine
    for key in ("eos_token", "bos_token", "pad_token", "unk_token"):
        if info.get(key) is None and getattr(tok, key, None) is not None:
            info[key] = _plain(getattr(tok, key))
    info["tokenizer_class"] = type(tok).__name__
    if getattr(tok, "chat_template", None):
        info["chat_template"] = tok.chat_template
    return JSONResponse(info)
