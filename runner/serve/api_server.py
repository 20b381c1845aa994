"""The HTTP side: a Starlette (ASGI) app with OpenAI's endpoints over one AsyncLLMEngine.

    POST /v1/completions        text or token-id prompts (a list = a batch), stream=true -> SSE
    POST /v1/chat/completions   messages rendered with the model's chat template
    POST /v1/embeddings         LLM.encode, for embedding models (400 for a generative one)
    GET  /v1/models, /health, /metrics (Prometheus), /version

A request moves: JSON body -> protocol.parse_* (SamplingParams rules, 400 naming the field)
-> AsyncLLMEngine.add_request per prompt (the engine thread tokenizes and queues it; a too-long
prompt comes back as a 400 before any byte of the answer is sent) -> RequestStream(s) ->
a JSON answer, or server-sent events chunk by chunk ending with `data: [DONE]`. A client that
disconnects (stream or not) aborts its requests, which frees their sequences in the engine.
Lifespan: startup starts the engine thread; shutdown (uvicorn's, after it has let in-flight
requests finish on SIGTERM) stops it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from typing import Any, AsyncIterator, Optional

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.serve import metrics as prom
from runner.serve.async_engine import (AsyncLLMEngine, EngineOverloadedError,
                                       EngineShutdownError, RequestStream)
from runner.serve.protocol import (SSE_DONE, APIError, DeltaTracker, GenerationRequest,
                                   bad_request, chat_logprobs, chat_response, completion_logprobs,
                                   completion_response, embedding_response,
                                   parse_chat_request, parse_completion_request,
                                   parse_embedding_request, random_id, render_chat, sse, usage)

logger = logging.getLogger("runner.serve")

_POOLING_TASKS = {"embed", "embedding", "pooling", "encode", "reward", "classify", "score"}


def is_embedding_model(llm: Any) -> bool:
    """Whether the loaded model pools (embeddings) rather than generates."""
    if hasattr(llm, "pooling_runner"):
        return llm.pooling_runner is not None
    mc = getattr(llm.llm_engine, "model_config", None)
    for attr in ("task", "runner_type", "pooling_type"):
        value = getattr(mc, attr, None)
        if isinstance(value, str) and value != "auto":
            return value in _POOLING_TASKS or attr == "pooling_type"
    for attr in ("is_embedding_model", "embedding_mode", "is_pooling_model"):
        value = getattr(mc, attr, None)
        if isinstance(value, bool):
            return value
    archs = getattr(getattr(mc, "hf_config", None), "architectures", None) or []
    return bool(archs) and not any(a.endswith(("ForCausalLM", "LMHeadModel",
                                               "ForConditionalGeneration")) for a in archs)


class ServerState:
    def __init__(self, engine: AsyncLLMEngine, served_model_names: list[str],
                 default_sampling: dict, api_key: Optional[str] = None):
        self.engine = engine
        self.served_model_names = served_model_names
        self.default_sampling = default_sampling
        self.api_key = api_key
        self.http_counts: Counter = Counter()
        self.tokenizer = engine.llm.get_tokenizer()
        self.embedding = is_embedding_model(engine.llm)
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    def check_model(self, name: str) -> None:
        if name not in self.served_model_names:
            raise APIError(404, f"The model `{name}` does not exist; this server serves "
                                f"{self.served_model_names[0]!r} (GET /v1/models).", "model")


# ---------------------------------------------------------------------------------------------
# Helpers


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object.")
    return body


def _check_auth(state: ServerState, request: Request) -> None:
    if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
        raise APIError(401, "missing or wrong API key (Authorization: Bearer ...).")


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


async def _add_all(state: ServerState, request_id: str, req: GenerationRequest,
                   prompts: list) -> list[RequestStream]:
    streams: list[RequestStream] = []
    try:
        for i, p in enumerate(prompts):
            prompt = p if isinstance(p, str) else {"prompt_token_ids": p}
            streams.append(await state.engine.add_request(
                f"{request_id}-{i}", prompt, req.params, req.add_special_tokens))
    except BaseException as exc:
        for s in streams:
            s.abort()
        if isinstance(exc, ValueError):
            raise bad_request(exc) from None
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

    def __init__(self, chunks: AsyncIterator[bytes]):
        # No Response.__init__: it would declare a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
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


def _hold_partial(req: GenerationRequest) -> bool:
    # Beam search and best_of > n choose their outputs only at the end: stream those whole.
    p = req.params
    return bool(p.use_beam_search) or (p.best_of or p.n) > p.n


def _error_event(exc: BaseException) -> bytes:
    status = 503 if isinstance(exc, EngineShutdownError) else 500
    return sse(APIError(status, str(exc)).body())


# ---------------------------------------------------------------------------------------------
# Endpoints


async def completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    _check_auth(state, request)
    req = parse_completion_request(await _json_body(request), state.default_sampling)
    state.check_model(req.model)
    if state.embedding:
        raise APIError(400, "this server runs an embedding model; use /v1/embeddings.", "model")
    request_id = random_id("cmpl")
    streams = await _add_all(state, request_id, req, req.prompts)
    abort_all = lambda: [s.abort() for s in streams]  # noqa: E731
    if req.stream:
        return SSEResponse(_completion_events(state, req, request_id, streams))
    outputs = await _unless_disconnected(
        request, asyncio.gather(*(_final(s) for s in streams)), abort_all)
    if outputs is None:
        return Response(status_code=499)
    return JSONResponse(completion_response(req, outputs, state.tokenizer, request_id))


async def _completion_events(state: ServerState, req: GenerationRequest, request_id: str,
                             streams: list[RequestStream]) -> AsyncIterator[bytes]:
    created, n, hold = int(time.time()), req.params.n, _hold_partial(req)
    trackers = [DeltaTracker() for _ in streams]
    finals: list = [None] * len(streams)
    try:
        async for i, out in _merged(streams):
            if hold and not out.finished:
                continue
            for c in out.outputs:
                tr = trackers[i]
                if c.index in tr.finished:
                    continue
                start = tr.text_len.get(c.index, 0)
                finish = c.finish_reason if out.finished else None
                d = tr.delta(c, finish is not None)
                if d is None:
                    continue
                text, t0, t1 = d
                choice = {"index": i * n + c.index, "text": text, "logprobs": None,
                          "finish_reason": finish,
                          "stop_reason": c.stop_reason if finish else None}
                if req.params.logprobs is not None and c.logprobs is not None:
                    choice["logprobs"] = completion_logprobs(
                        list(c.token_ids[t0:t1]), c.logprobs[t0:t1], state.tokenizer, start)
                yield sse({"id": request_id, "object": "text_completion", "created": created,
                           "model": req.model, "choices": [choice]})
            if out.finished:
                finals[i] = out
        if req.include_usage:
            yield sse({"id": request_id, "object": "text_completion", "created": created,
                       "model": req.model, "choices": [], "usage": usage(finals)})
    except (EngineShutdownError, RuntimeError) as exc:
        yield _error_event(exc)
    finally:
        for s in streams:
            s.abort()
    yield SSE_DONE


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    _check_auth(state, request)
    req = parse_chat_request(await _json_body(request), state.default_sampling)
    state.check_model(req.model)
    if state.embedding:
        raise APIError(400, "this server runs an embedding model; use /v1/embeddings.", "model")
    prompt = render_chat(state.tokenizer, req)
    request_id = random_id("chatcmpl")
    streams = await _add_all(state, request_id, req, [prompt])
    if req.stream:
        return SSEResponse(_chat_events(state, req, request_id, streams[0]))
    out = await _unless_disconnected(request, _final(streams[0]), streams[0].abort)
    if out is None:
        return Response(status_code=499)
    return JSONResponse(chat_response(req, out, state.tokenizer, request_id))


async def _chat_events(state: ServerState, req: GenerationRequest, request_id: str,
                       stream: RequestStream) -> AsyncIterator[bytes]:
    created, hold = int(time.time()), _hold_partial(req)
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created,
            "model": req.model}
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
                yield sse({**head, "choices": [choice]})
            if out.finished:
                final = out
        if req.include_usage and final is not None:
            yield sse({**head, "choices": [], "usage": usage([final])})
    except (EngineShutdownError, RuntimeError) as exc:
        yield _error_event(exc)
    finally:
        stream.abort()
    yield SSE_DONE


async def embeddings(request: Request) -> Response:
    state: ServerState = request.app.state.server
    _check_auth(state, request)
    model, inputs, dims, fmt = parse_embedding_request(await _json_body(request))
    state.check_model(model)
    if not state.embedding:
        raise APIError(400, f"the model `{model}` is a generative model; /v1/embeddings needs an "
                            "embedding (pooling) model. Use /v1/completions.", "model")
    from runner.engine import PoolingParams

    try:
        pooling = PoolingParams(dimensions=dims)
    except ValueError as exc:
        raise APIError(400, str(exc), "dimensions") from None
    prompts = [p if isinstance(p, str) else {"prompt_token_ids": p} for p in inputs]
    llm = state.engine.llm
    try:
        outputs = await state.engine.run_in_engine_thread(
            lambda: llm.encode(prompts, pooling, use_tqdm=False))
    except (ValueError, NotImplementedError) as exc:
        raise APIError(400, str(exc), "input") from None
    return JSONResponse(embedding_response(model, outputs, fmt))


async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    _check_auth(state, request)
    max_len = getattr(getattr(state.engine.engine, "scheduler_config", None), "max_model_len",
                      None)
    data = [{"id": name, "object": "model", "created": state.created, "owned_by": "runner",
             "root": state.served_model_names[-1], "max_model_len": max_len}
            for name in state.served_model_names]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    engine = request.app.state.server.engine
    if engine.is_running and engine.error is None:
        return Response(status_code=200)
    return JSONResponse(APIError(503, "the engine is not running").body(), status_code=503)


async def version(request: Request) -> Response:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    with contextlib.suppress(PackageNotFoundError):
        return JSONResponse({"version": pkg_version("runner")})
    return JSONResponse({"version": "dev"})


async def metrics(request: Request) -> Response:
    state: ServerState = request.app.state.server
    text = prom.render(state.model_name, state.engine.counters, state.engine.gauges,
                       state.http_counts)
    return Response(text, media_type=prom.CONTENT_TYPE)


async def _api_error(request: Request, exc: APIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _engine_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(APIError(503, str(exc)).body(), status_code=503)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in %s", request.url.path, exc_info=exc)
    return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}").body(),
                        status_code=500)


def build_app(engine: AsyncLLMEngine, served_model_names: list[str], default_sampling: dict,
              api_key: Optional[str] = None, shutdown_timeout: float = 10.0) -> Starlette:
    """The ASGI app. Its lifespan starts the engine thread and stops it on shutdown."""
    state = ServerState(engine, served_model_names, default_sampling, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        logger.info("serving %s", served_model_names[0])
        try:
            yield
        finally:
            engine.stop_accepting()
            await asyncio.get_running_loop().run_in_executor(None, engine.shutdown,
                                                             shutdown_timeout)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan,
        middleware=[Middleware(prom.HTTPCounter, counts=state.http_counts)],
        exception_handlers={APIError: _api_error, EngineShutdownError: _engine_error,
                            EngineOverloadedError: _engine_error, Exception: _internal_error})
    app.state.server = state
    return app
