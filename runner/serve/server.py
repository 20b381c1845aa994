"""From a validated ServeRunConfig (or an LLM) to a running uvicorn server. No Hydra here.

    serve(cfg): serve.gpus -> CUDA_VISIBLE_DEVICES (before the engine touches CUDA)
        -> the sampling preset checked as SamplingParams (request defaults)
        -> model source (GGUF in a package, folder, hub id) -> LLM(**engine kwargs)
        -> make_server(llm, ..., serve=cfg.serve) -> uvicorn.Server.run() until SIGINT/SIGTERM

SIGTERM: uvicorn stops accepting connections and waits for the in-flight requests. When
serve.graceful_shutdown_timeout seconds have passed, `GracefulServer` ends whatever is still in
the engine with EngineShutdownError: a waiting client gets a 503 in OpenAI's error format, an
open stream an error event and `data: [DONE]` (uvicorn's own timeout, a few seconds later, would
otherwise cancel the handlers and send plain-text 500s). Then the app's shutdown stops the
engine thread; exit status 0.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from typing import Any, Optional

from runner.serve.config import (ServeConfig, ServeRunConfig, default_sampling, gpu_list,
                                 llm_engine_kwargs, lora_requests)

logger = logging.getLogger("runner.serve")

# Seconds past the grace period that uvicorn still waits, so the 503s and the streams' last
# events are sent before it cancels anything.
_SEND_MARGIN_S = 5.0


def _graceful_server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn.Server that fails the requests still in the engine when the grace period
        is over, instead of letting uvicorn cancel their handlers."""

        def __init__(self, config, engine, grace: float):
            super().__init__(config)
            self.async_engine = engine
            self.grace = grace

        async def shutdown(self, sockets=None):
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.grace, self._grace_over)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def _grace_over(self) -> None:
            n = self.async_engine.gauges.get("num_unfinished_requests", 0)
            logger.warning("graceful shutdown: %.0f s are over; ending %d request(s) still in "
                           "flight with 503", self.grace, n)
            self.async_engine.fail_pending(
                f"the server is shutting down (the {self.grace:g} s graceful shutdown period is "
                "over); the request did not finish")

    return GracefulServer


def make_server(llm: Any, served_model_names: list[str], default_sampling_params: dict,
                serve: Optional[ServeConfig] = None, **overrides: Any):
    """A uvicorn.Server over `llm` (not started: call .run()). `serve` holds the server's
    settings (defaults: ServeConfig()); keyword arguments override its fields (host, port,
    api_key, max_n, ...)."""
    import uvicorn

    from runner.serve.api_server import build_app
    from runner.serve.async_engine import AsyncLLMEngine

    cfg = dataclasses.replace(serve or ServeConfig(), **overrides)
    engine = AsyncLLMEngine(llm, max_pending_requests=cfg.max_pending_requests)
    app = build_app(engine, served_model_names, default_sampling_params, cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                            timeout_keep_alive=cfg.timeout_keep_alive,
                            timeout_graceful_shutdown=cfg.graceful_shutdown_timeout
                            + _SEND_MARGIN_S, lifespan="on")
    return _graceful_server_class()(config, engine, cfg.graceful_shutdown_timeout)


def served_names(cfg: ServeRunConfig) -> list[str]:
    """The names clients may send as "model": the configured one first, then the model id."""
    names = [cfg.serve.served_model_name or cfg.model.name]
    if cfg.model.model not in names:
        names.append(cfg.model.model)
    return names


def serve(cfg: ServeRunConfig) -> None:
    from runner.engine import LLM, SamplingParams
    from runner.model_source import resolve_model_source

    gpus = gpu_list(cfg.serve.gpus)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        logger.info("CUDA_VISIBLE_DEVICES=%s", gpus)
    defaults = default_sampling(cfg)
    try:
        SamplingParams(**defaults)
    except ValueError as exc:
        raise ValueError(f"sampling preset: {exc}") from None
    source = resolve_model_source(cfg.model)
    llm = LLM(**llm_engine_kwargs(cfg, source.model))
    for lora in lora_requests(cfg.serve.lora_modules).values():    # bad folders fail now
        llm.llm_engine.executor.model_runner.lora_manager.get_adapter(lora)
    server = make_server(llm, served_names(cfg), defaults, cfg.serve)
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises the signal under the
    # handlers it found; these make that a normal exit (status 0) after the graceful shutdown.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _after_shutdown)
    server.run()
    logger.info("server stopped")


def _after_shutdown(signum, frame) -> None:
    logger.info("shut down on signal %d", signum)
