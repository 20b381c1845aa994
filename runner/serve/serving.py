"""The generation endpoints: /v1/completions, /v1/chat/completions, /v1/embeddings.

A request moves:
    body -> ServerState.read_request (limits, strict types, unknown fields: 400 / 413)
    -> protocol.parse_* (SamplingParams' rules: 400 naming the field) -> the model (404)
    -> chat: the template rendered off the event loop (runner/serve/chat_render.py)
    -> prompts tokenized in the tokenizer thread, each fitted to max_model_len
       (runner/serve/prompts.py)
    -> AsyncLLMEngine.add_request per prompt -> RequestStreams
    -> a JSON answer, or server-sent events ending with `data: [DONE]` (runner/serve/responses.py)
A client that disconnects (stream or not) aborts its requests, which frees their sequences. An
engine failure is a 500 naming the request id (an error event in a stream); shutting down is a
503 (an error event, then [DONE]).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runner.serve.async_engine import (EngineOverloadedError, EngineRequestError,
                                       EngineShutdownError, RequestStream)
from runner.serve.chat_render import render_chat
from runner.serve.errors import APIError, bad_request
from runner.serve.protocol import GenerationRequest, hold_partial, parse_chat, parse_completion
from runner.serve.responses import (SSE_DONE, CompletionStreamer, DeltaTracker, chat_logprobs,
                                    chat_response, completion_response, embedding_response, sse,
                                    usage)
from runner.serve.state import ServerState

logger = logging.getLogger("runner.serve")


def error_of(exc: BaseException) -> APIError:
    """The APIError a failure becomes (for a JSON answer or a stream's error event)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (EngineShutdownError, EngineOverloadedError)):
        return APIError(503, str(exc))
    if isinstance(exc, EngineRequestError):
        return APIError(500, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, coro, on_disconnect) -> Any:
    """Await coro; if the client goes away first, cancel it and call on_disconnect()."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        on_disconnect()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    on_disconnect()
    return None


async def _add_all(state: ServerState, response_id: str, req: GenerationRequest,
                   prompts: list[dict]) -> list[RequestStream]:
    params = [req.params_for(len(p["prompt_token_ids"]), state.max_model_len) for p in prompts]
    base = state.engine.new_request_id(response_id)
    lora = state.lora_requests.get(req.model) if req.model is not None else None
    streams: list[RequestStream] = []
    try:
        for i, (p, sp) in enumerate(zip(prompts, params)):
            streams.append(await state.engine.add_request(f"{base}-{i}", p, sp,
                                                          lora_request=lora))
    except BaseException as exc:
        for s in streams:
            s.abort()
        if isinstance(exc, (ValueError, NotImplementedError)):
            raise bad_request(exc, req.known_fields) from None
        raise
    return streams


async def _final(stream: RequestStream) -> Any:
    last = None
    async for out in stream:
        last = out
    return last


async def _merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Any]]:
    """(prompt index, output) from several streams as they come."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream):
        try:
            async for out in s:
                await q.put((i, out))
        except BaseException as exc:  # delivered to the consumer below
            await q.put((i, exc))
        await q.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await q.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


class SSEResponse(Response):
    """Server-sent events from an async generator; a client disconnect cancels the generator
    (whose cleanup aborts the requests)."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], request_id: str):
        # No Response.__init__: it would declare a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
                            (b"x-request-id", request_id.encode("latin-1", "replace"))]
        self.chunks = chunks

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        main = asyncio.current_task()
        gone = asyncio.Event()

        async def watch():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    main.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
        except OSError:  # the transport closed under us: the client is gone
            pass
        finally:
            watcher.cancel()
            await self.chunks.aclose()


def _error_event(exc: BaseException) -> bytes:
    if not isinstance(exc, (EngineShutdownError, EngineOverloadedError, EngineRequestError,
                            APIError)):
        logger.exception("error in a stream", exc_info=exc)
    return sse(error_of(exc).body())


def _json(body: dict, response_id: str) -> JSONResponse:
    return JSONResponse(body, headers={"x-request-id": response_id})


def _response_id(request: Request, prefix: str, req: GenerationRequest) -> str:
    return f"{prefix}-{req.request_id or request.state.request_id}"


# ---------------------------------------------------------------------------- completions


async def completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    f = await state.read_request(request, "completions")
    req = parse_completion(f, state.default_sampling, state.facts.sampling_fields,
                           state.known["completions"])
    model = state.check_model(req.model)
    if state.embedding:
        raise APIError(400, "this server runs an embedding model; use /v1/embeddings.", "model")
    response_id = _response_id(request, "cmpl", req)
    prompts = await state.prompts.prepare(req.prompts, req.add_special_tokens,
                                          req.truncate_prompt_tokens)
    streams = await _add_all(state, response_id, req, prompts)
    if req.stream:
        return SSEResponse(_completion_events(state, req, response_id, model, streams),
                           response_id)
    outputs = await _unless_disconnected(
        request, asyncio.gather(*(_final(s) for s in streams)),
        lambda: [s.abort() for s in streams])
    if outputs is None:
        return Response(status_code=499)
    return _json(completion_response(req, outputs, state.tokenizer, response_id, model),
                 response_id)


async def _completion_events(state: ServerState, req: GenerationRequest, response_id: str,
                             model: str, streams: list[RequestStream]) -> AsyncIterator[bytes]:
    streamer = CompletionStreamer(req, state.tokenizer, response_id, model, len(streams))
    hold = hold_partial(req)
    try:
        async for i, out in _merged(streams):
            if hold and not out.finished:
                continue
            for chunk in streamer.feed(i, out):
                yield chunk
        if req.include_usage:
            yield streamer.usage_chunk()
    except Exception as exc:
        yield _error_event(exc)
    finally:
        for s in streams:
            s.abort()
    yield SSE_DONE


# ---------------------------------------------------------------------------------- chat


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    f = await state.read_request(request, "chat")
    req = parse_chat(f, state.default_sampling, state.facts.sampling_fields,
                     state.known["chat"])
    model = state.check_model(req.model)
    if state.embedding:
        raise APIError(400, "this server runs an embedding model; use /v1/embeddings.", "model")
    cfg = state.cfg
    text = await render_chat(state.tokenizer, req.chat,
                             allow_request_template=cfg.allow_request_chat_template,
                             timeout=cfg.chat_template_timeout,
                             max_memory_mb=cfg.chat_template_max_memory_mb)
    response_id = _response_id(request, "chatcmpl", req)
    prompts = await state.prompts.prepare([text], req.add_special_tokens,
                                          req.truncate_prompt_tokens, name="messages")
    streams = await _add_all(state, response_id, req, prompts)
    if req.stream:
        return SSEResponse(_chat_events(state, req, response_id, model, streams[0]),
                           response_id)
    out = await _unless_disconnected(request, _final(streams[0]), streams[0].abort)
    if out is None:
        return Response(status_code=499)
    return _json(chat_response(req, out, state.tokenizer, response_id, model), response_id)


async def _chat_events(state: ServerState, req: GenerationRequest, response_id: str,
                       model: str, stream: RequestStream) -> AsyncIterator[bytes]:
    hold = hold_partial(req)
    head = {"id": response_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    tr = DeltaTracker()
    final = None
    try:
        for i in range(req.params.n):
            yield sse({**head, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
        async for out in stream:
            if hold and not out.finished:
                continue
            for c in out.outputs:
                if c.index in tr.finished:
                    continue
                finish = c.finish_reason if out.finished else None
                d = tr.delta(c, finish is not None)
                if d is None:
                    continue
                text, t0, t1 = d
                choice = {"index": c.index, "delta": {"content": text} if text else {},
                          "logprobs": None, "finish_reason": finish}
                if req.top_logprobs is not None and c.logprobs is not None:
                    choice["logprobs"] = chat_logprobs(list(c.token_ids[t0:t1]),
                                                       c.logprobs[t0:t1], state.tokenizer,
                                                       req.top_logprobs)
                if finish is not None:
                    choice["stop_reason"] = c.stop_reason
                chunk = {**head, "choices": [choice]}
                if req.continuous_usage:
                    p = len(out.prompt_token_ids or [])
                    chunk["usage"] = {"prompt_tokens": p, "total_tokens": p + t1,
                                      "completion_tokens": t1}
                yield sse(chunk)
            if out.finished:
                final = out
        if req.include_usage and final is not None:
            yield sse({**head, "choices": [], "usage": usage([final])})
    except Exception as exc:
        yield _error_event(exc)
    finally:
        stream.abort()
    yield SSE_DONE


# ----------------------------------------------------------------------------- embeddings


async def embeddings(request: Request) -> Response:
    from runner.engine import PoolingParams

    state: ServerState = request.app.state.server
    f = await state.read_request(request, "embeddings")
    model = state.check_model(f.get("model"))
    if not state.embedding:
        raise APIError(400, f"the model `{model}` is a generative model; /v1/embeddings needs "
                            "an embedding (pooling) model. Use /v1/completions.", "model")
    try:
        pooling = PoolingParams(dimensions=f.get("dimensions"))
    except ValueError as exc:
        raise APIError(400, str(exc), "dimensions") from None
    raw = f["input"]
    inputs = [raw] if isinstance(raw, str) or isinstance(raw[0], int) else list(raw)
    prompts = await state.prompts.prepare(inputs, f.get("add_special_tokens", True), None,
                                          name="input", limit=state.max_model_len)
    engine_prompts = [{"prompt_token_ids": p["prompt_token_ids"]} for p in prompts]
    llm = state.engine.llm
    try:
        outputs = await state.engine.run_in_engine_thread(
            lambda: llm.embed(engine_prompts, pooling_params=pooling, use_tqdm=False))
    except (ValueError, NotImplementedError) as exc:
        raise APIError(400, str(exc), "input") from None
    return JSONResponse(embedding_response(model, outputs, f.get("encoding_format", "float")))
