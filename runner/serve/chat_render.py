"""Chat messages -> the prompt text, off the event loop; a client's own template in a child
process with a time and a memory limit.

    ChatInput (validated messages, add_generation_prompt, continue_final_message, template,
               template kwargs)
      -> messages normalized (text parts joined with newlines, as vLLM's "string" format)
      -> the model's template: tokenizer.apply_chat_template in a worker thread (trusted, and
         the event loop stays free)
      -> a client's template (chat_template, or chat_template_kwargs.chat_template): refused
         unless serve.allow_request_chat_template; then rendered in a forked child under
         RLIMIT_AS (its address space + serve.chat_template_max_memory_mb) that is killed after
         serve.chat_template_timeout seconds. Jinja's sandbox bounds range(), not loops nested
         inside loops, nor a string multiplied by a billion; a child can be stopped, a thread
         cannot.

Template keyword arguments that are apply_chat_template's own parameters (tokenize,
return_dict, ...) are refused: they would change what the call returns, not what it renders.
"""
from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

from runner.serve.errors import APIError
from runner.serve.protocol import ChatInput

RESERVED_KWARGS = frozenset({
    "tokenize", "return_dict", "padding", "truncation", "max_length", "return_tensors",
    "return_assistant_tokens_mask", "tokenizer_kwargs", "tools", "documents", "conversation",
    "messages", "add_generation_prompt", "continue_final_message", "chat_template"})


def normalize_messages(messages: list) -> list[dict]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content)
        msg = {"role": m["role"], "content": content if content is not None else ""}
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out


def _kwargs(chat: ChatInput) -> dict:
    bad = sorted(set(chat.chat_template_kwargs) & RESERVED_KWARGS)
    if bad:
        raise APIError(400, f"chat_template_kwargs may not set {', '.join(bad)} (parameters of "
                            "the rendering call, not template variables).",
                       "chat_template_kwargs")
    return {**chat.chat_template_kwargs, "tokenize": False,
            "add_generation_prompt": chat.add_generation_prompt,
            "continue_final_message": chat.continue_final_message}


async def render_chat(tokenizer: Any, chat: ChatInput, *, allow_request_template: bool,
                      timeout: float, max_memory_mb: int) -> str:
    """The prompt text of a chat request (APIError 400 when it cannot be rendered)."""
    if chat.chat_template is not None and not allow_request_template:
        raise APIError(400, "a chat template was passed with the request, but this server "
                            "renders only its own (serve.allow_request_chat_template is not "
                            "set).", "chat_template")
    if tokenizer is None:
        raise APIError(400, "this server has no tokenizer; use /v1/completions with token ids.",
                       "messages")
    if chat.chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise APIError(400, "this model has no chat template; use /v1/completions.",
                       "messages")
    messages = normalize_messages(chat.messages)
    kwargs = _kwargs(chat)
    loop = asyncio.get_running_loop()
    if chat.chat_template is None:
        def work():
            return _apply(tokenizer, messages, kwargs)
        status, value = await loop.run_in_executor(None, work)
    else:
        kwargs["chat_template"] = chat.chat_template
        status, value = await loop.run_in_executor(
            None, _render_in_child, tokenizer, messages, kwargs, timeout, max_memory_mb)
    if status == "timeout":
        raise APIError(400, f"the chat template did not render within {timeout:g} s "
                            "(serve.chat_template_timeout).", "chat_template")
    if status != "ok":
        raise APIError(400, f"the chat template could not render these messages: {value}",
                       "chat_template" if chat.chat_template is not None else "messages")
    if not isinstance(value, str):
        raise APIError(400, "the chat template did not render to text.", "chat_template")
    return value


def _apply(tokenizer: Any, messages: list, kwargs: dict) -> tuple[str, Any]:
    try:
        return "ok", tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as exc:  # a template that rejects these messages (roles, order)
        return "error", f"{type(exc).__name__}: {exc}"


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(conn, tokenizer: Any, messages: list, kwargs: dict, max_memory_mb: int) -> None:
    try:
        import resource

        base = _vm_bytes()
        if base:
            limit = base + max_memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    try:
        result = _apply(tokenizer, messages, kwargs)
    except MemoryError:
        result = ("error", f"MemoryError: the template needs more than {max_memory_mb} MB "
                           "(serve.chat_template_max_memory_mb)")
    try:
        conn.send(result)
    except Exception as exc:  # e.g. the rendered text itself was too large to send
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _render_in_child(tokenizer: Any, messages: list, kwargs: dict, timeout: float,
                     max_memory_mb: int) -> tuple[str, Any]:
    """Blocking (called in a worker thread): fork, render there, wait at most `timeout`."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, tokenizer, messages, kwargs, max_memory_mb),
                       daemon=True, name="serve-chat-template")
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            try:
                return recv.recv()
            except (EOFError, OSError):
                return "error", f"the renderer exited with status {proc.exitcode}"
        return "timeout", None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()
