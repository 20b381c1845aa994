"""The structured config of `python -m runner.serve`: the runner's model/engine/sampling groups
plus a `serve` node (host, port, GPUs, server limits).

Data flow: `register_configs(cs)` stores `ServeRunConfig` as `serve_schema`; conf/serve.yaml
lists it first in its defaults, then the model/, engine/ and sampling/ groups of conf/, so a
typo (`serve.prot=1`) fails at compose time. runner/serve/__main__.py turns the DictConfig into
these dataclasses and from there on only plain objects move: `llm_engine_kwargs` builds the
LLM(...) keyword arguments, `default_sampling` gives the sampling preset as the defaults of
every field a request leaves out (as vLLM's --generation-config does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from runner.schemas import EngineConfig, ModelConfig, SamplingConfig, to_plain

@dataclass
class ServeConfig:
    """Where and how the HTTP server listens."""

    host: str = "127.0.0.1"  # loopback unless asked: the API has no authentication of its own
    port: int = 8000
    # GPU ids for CUDA_VISIBLE_DEVICES, set before the engine starts ("0,1"); null keeps the
    # environment's. An int (serve.gpus=1) means that one id.
    gpus: Optional[Any] = None
    # The name clients send as "model"; null: model.name. The model path is accepted too.
    served_model_name: Optional[str] = None
    # Seconds SIGTERM waits for in-flight requests before it aborts them.
    graceful_shutdown_timeout: float = 30.0
    # Requests queued in the engine beyond this many get 503 at once (null: no limit).
    max_pending_requests: Optional[int] = None
    api_key: Optional[str] = None  # when set, requests need "Authorization: Bearer KEY"
    log_level: str = "info"  # uvicorn's log level
    timeout_keep_alive: int = 5


@dataclass
class ServeRunConfig:
    """The whole server: model + engine + default sampling + serve."""

    model: ModelConfig = MISSING
    engine: EngineConfig = MISSING
    sampling: SamplingConfig = MISSING
    serve: ServeConfig = field(default_factory=ServeConfig)
    seed: int = 0


def register_configs(cs) -> None:
    cs.store(name="serve_schema", node=ServeRunConfig)


def gpu_list(gpus: Any) -> Optional[str]:
    """serve.gpus as CUDA_VISIBLE_DEVICES: "0,1", [0, 1], 1 -> "0,1" / "1"; None -> None."""
    if gpus is None:
        return None
    if isinstance(gpus, (list, tuple)):
        items = [str(g).strip() for g in gpus]
    else:
        items = [g.strip() for g in str(gpus).split(",")]
    items = [g for g in items if g]
    for g in items:
        if not g.isdigit():
            raise ValueError(f"serve.gpus={gpus!r}: expected comma-separated GPU ids like 0,1")
    return ",".join(items)


def llm_engine_kwargs(cfg: ServeRunConfig, model_path: str) -> dict:
    """LLM(...) keyword arguments, from the runner's one EngineArgs builder (the engine group's
    backend keys, e.g. engine=remote's url, are never passed on)."""
    import dataclasses

    from runner.backends.engine_args import engine_args
    from runner.model_source import ModelSource

    args = engine_args(cfg.model, cfg.engine, cfg.seed, ModelSource(model=model_path, kind="local"))
    return dataclasses.asdict(args)


def default_sampling(cfg: ServeRunConfig) -> dict:
    """The sampling preset as a dict of SamplingParams fields (request defaults)."""
    return to_plain(cfg.sampling)
