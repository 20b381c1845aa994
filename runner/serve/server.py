"""From a validated ServeRunConfig (or an LLM) to a running uvicorn server. No Hydra here.

    serve(cfg): serve.gpus -> CUDA_VISIBLE_DEVICES (before the engine touches CUDA)
        -> the sampling preset checked as SamplingParams (request defaults)
        -> model source (GGUF in a package, folder, hub id) -> LLM(**engine kwargs)
        -> make_server(llm, ...) -> uvicorn.Server.run() until SIGINT/SIGTERM

On SIGTERM uvicorn stops accepting connections, lets in-flight requests finish for up to
serve.graceful_shutdown_timeout seconds, then runs the app's shutdown, which stops the engine
thread (whatever still runs is aborted and its clients get a clean error).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Optional

from runner.serve.config import ServeRunConfig, default_sampling, gpu_list, llm_engine_kwargs

logger = logging.getLogger("runner.serve")


def make_server(llm: Any, served_model_names: list[str], default_sampling_params: dict,
                host: str = "127.0.0.1", port: int = 8000, *,
                graceful_shutdown_timeout: float = 30.0, max_pending_requests: Optional[int] = None,
                api_key: Optional[str] = None, log_level: str = "info",
                timeout_keep_alive: int = 5):
    """A uvicorn.Server over `llm` (not started: call .run(), or .serve() in a loop)."""
    import uvicorn

    from runner.serve.api_server import build_app
    from runner.serve.async_engine import AsyncLLMEngine

    engine = AsyncLLMEngine(llm, max_pending_requests=max_pending_requests)
    app = build_app(engine, served_model_names, default_sampling_params, api_key=api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_keep_alive=timeout_keep_alive,
                            timeout_graceful_shutdown=graceful_shutdown_timeout,
                            lifespan="on")
    server = uvicorn.Server(config)
    server.async_engine = engine  # for callers that want the engine's numbers
    return server


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
    server = make_server(
        llm, served_names(cfg), defaults, cfg.serve.host, cfg.serve.port,
        graceful_shutdown_timeout=cfg.serve.graceful_shutdown_timeout,
        max_pending_requests=cfg.serve.max_pending_requests, api_key=cfg.serve.api_key,
        log_level=cfg.serve.log_level, timeout_keep_alive=cfg.serve.timeout_keep_alive)
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises the signal under the
    # handlers it found; these make that a normal exit (status 0) after the graceful shutdown.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _after_shutdown)
    server.run()
    logger.info("server stopped")


def _after_shutdown(signum, frame) -> None:
    logger.info("shut down on signal %d", signum)
