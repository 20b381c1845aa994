"""Backends: where a run's engine requests go. One protocol, one builder.

    build_backend(cfg, source) -> Backend            engine.backend picks it
      local   runner.engine in this process (LLM / LLMEngine public API)      backends/local.py
      remote  an OpenAI-compatible server over /v1/completions (engine.url)  backends/remote.py
      ray     engine.data_parallel_size replicas of the local engine as Ray actors, fed
              from one work queue in this process (engine.backend=ray, or local with
              data_parallel_size > 1)                                          backends/ray.py

    backend.submit(request_id, Request)   queue one request (runner.tasks.api.Request)
    backend.results() -> [RequestOutput]  the requests that finished since the last call
                                          (vLLM's objects, finished=True; none is built for a
                                          request still running); raises when it is called
                                          with nothing in flight
    backend.abort(request_ids)            drop requests (their outputs never come)
    backend.stats() -> dict               engine counters for benchmark.json
    backend.close()                       release the engine or the connection; always called

Every backend also says what the lifecycle needs around the requests: `tokenizer` (renders
prompts), `max_model_len`, `is_embedding_model`, `model_info()` (manifest: resolved model,
revision, dtype, weight files) and `encode(texts)` for embedding models (mode=embed).
The lifecycle builds the backend before the run folder exists, so a bad engine value or a
missing model leaves nothing behind, and closes it in a `finally`.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Protocol, runtime_checkable

from runner.tasks.api import Request


@runtime_checkable
class Backend(Protocol):
    kind: str
    tokenizer: Any
    max_model_len: Optional[int]
    is_embedding_model: bool

    def submit(self, request_id: str, request: Request) -> None:
        ...

    def results(self) -> list:
        ...

    def abort(self, request_ids: Iterable[str]) -> None:
        ...

    def stats(self) -> dict:
        ...

    def close(self) -> None:
        ...

    def model_info(self) -> dict:
        ...

    def encode(self, texts: list[str]) -> list[list[float]]:
        ...


def build_backend(cfg: Any, source: Any, engine_overrides: Optional[dict] = None) -> Backend:
    """The backend `cfg.engine.backend` names, ready for requests (`source`: a ModelSource).

    `engine_overrides` replace EngineArgs fields for this backend only (bench's
    compare_eager builds a second, eager engine this way)."""
    lora = getattr(cfg.model, "lora", None)
    if lora and cfg.engine.backend == "remote":
        raise ValueError(f"model.lora={lora!r} needs the local engine; a remote server selects "
                         "its adapter by model name (serve --lora-modules NAME=PATH, then "
                         "engine.served_model_name=NAME).")
    if cfg.engine.backend == "remote":
        from runner.backends.remote import RemoteBackend

        return RemoteBackend.from_config(cfg, source)
    import dataclasses

    from runner.backends.engine_args import cpu_threads, engine_args, runs_on_cpu
    from runner.backends.local import LocalBackend

    args = engine_args(cfg.model, cfg.engine, cfg.seed, source)
    if engine_overrides:
        args = dataclasses.replace(args, **engine_overrides)
    if cfg.engine.backend == "ray" or args.data_parallel_size > 1:
        from runner.backends.ray import RayBackend

        if lora:
            raise NotImplementedError(f"model.lora={lora!r} is not supported on the Ray backend "
                                      "yet; use engine.backend=local, data_parallel_size=1.")

        # a replica's CPU threads: cpu_threads when set, else its Ray CPU share (ray_cluster.py)
        return RayBackend(args, cfg.cpu_threads, cfg.distributed)
    threads = cpu_threads(cfg.cpu_threads) if runs_on_cpu(args.device) else None
    return LocalBackend(args, cpu_threads=threads, lora_path=lora)
