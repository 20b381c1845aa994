"""The ASGI app: routes, middleware, errors and lifespan over one AsyncLLMEngine.

    POST /v1/completions, /v1/chat/completions, /v1/embeddings   runner/serve/serving.py
    POST /tokenize, /detokenize; GET /tokenizer_info (gated)      runner/serve/serving_tokens.py
    GET  /v1/models, /health, /version, /metrics, /openapi.json    here

Every HTTP request passes, outermost first: HTTPCounter (/metrics' http_requests_total) ->
RequestId (X-Request-Id: the client's, else a fresh one; every response carries it) -> Auth
(with serve.api_key set, everything but /health needs "Authorization: Bearer KEY", compared
in constant time) -> the route. Errors leave as OpenAI's error body: APIError with its
status, a shutdown or overload 503, an engine failure or anything unexpected 500 with the
request id. Lifespan: startup starts the engine thread; shutdown (after uvicorn has let
in-flight requests finish) stops it and the tokenizer thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.serve import metrics as prom
from runner.serve.async_engine import (AsyncLLMEngine, EngineOverloadedError, EngineRequestError,
                                       EngineShutdownError)
from runner.serve.config import ServeConfig
from runner.serve.errors import APIError
from runner.serve.serving import chat_completions, completions, embeddings, error_of
from runner.serve.serving_tokens import detokenize, tokenize, tokenizer_info
from runner.serve.state import ServerState, key_matches

logger = logging.getLogger("runner.serve")

OPEN_PATHS = ("/health",)  # answered without the api key (load balancers' probes)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """scope["state"]["request_id"]: the client's X-Request-Id when it is a plain token, else
    a fresh uuid; the response carries it back."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class AuthMiddleware:
    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        digest = self.state.api_key_digest
        if scope["type"] != "http" or digest is None or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not key_matches(digest, auth):
            err = APIError(401, "missing or wrong API key (Authorization: Bearer ...).")
            return await JSONResponse(err.body(), status_code=401,
                                      headers={"www-authenticate": "Bearer"})(scope, receive,
                                                                               send)
        return await self.app(scope, receive, send)


async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    data = [{"id": name, "object": "model", "created": state.created, "owned_by": "runner",
             "root": state.served_model_names[-1], "parent": None,
             "max_model_len": state.max_model_len, "permission": []}
            for name in state.served_model_names]
    data += [{"id": name, "object": "model", "created": state.created, "owned_by": "runner",
              "root": lora.lora_path, "parent": state.model_name,
              "max_model_len": state.max_model_len, "permission": []}
             for name, lora in state.lora_requests.items()]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    engine = request.app.state.server.engine
    if engine.healthy:
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
                       state.http_counts, state.engine.stats)
    return Response(text, media_type=prom.CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    from runner.serve.openapi import openapi_document

    state: ServerState = request.app.state.server
    if getattr(state, "openapi", None) is None:
        state.openapi = openapi_document(state)
    return JSONResponse(state.openapi)


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


async def _api_error(request: Request, exc: APIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 / 405 in OpenAI's shape too."""
    err = APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
    headers = dict(exc.headers or {})
    return JSONResponse(err.body(), status_code=exc.status_code, headers=headers)


async def _engine_error(request: Request, exc: Exception) -> Response:
    err = error_of(exc)
    return JSONResponse(err.body(), status_code=err.status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    rid = _request_id(request)
    logger.exception("unhandled error in %s (request id %s)", request.url.path, rid,
                     exc_info=exc)
    err = APIError(500, f"internal error (request id {rid}): {type(exc).__name__}: {exc}")
    return JSONResponse(err.body(), status_code=500)


def build_app(engine: AsyncLLMEngine, served_model_names: list[str], default_sampling: dict,
              serve_config: Optional[ServeConfig] = None, shutdown_timeout: float = 10.0,
              api_key: Optional[str] = None) -> Starlette:
    """The ASGI app. Its lifespan starts the engine thread and stops it on shutdown."""
    cfg = serve_config or ServeConfig()
    if api_key is not None:
        import dataclasses
        cfg = dataclasses.replace(cfg, api_key=api_key)
    state = ServerState(engine, served_model_names, default_sampling, cfg)

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
            state.prompts.close()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if cfg.enable_tokenizer_info_endpoint:
        routes.append(Route("/tokenizer_info", tokenizer_info, methods=["GET"]))
    app = Starlette(
        routes=routes, lifespan=lifespan,
        middleware=[Middleware(prom.HTTPCounter, counts=state.http_counts),
                    Middleware(RequestIdMiddleware), Middleware(AuthMiddleware, state=state)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error,
                            EngineShutdownError: _engine_error,
                            EngineOverloadedError: _engine_error,
                            EngineRequestError: _engine_error, Exception: _internal_error})
    app.state.server = state
    return app
