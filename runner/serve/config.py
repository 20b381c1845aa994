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
from typing import Any, List, Optional

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
    # When set, every route but /health needs "Authorization: Bearer KEY" (compared in
    # constant time).
    api_key: Optional[str] = None
    log_level: str = "info"  # uvicorn's log level
    timeout_keep_alive: int = 5
    # Cost limits, checked before any work (docs/serve.md, "Limits"); a request over one is a
    # 400 (413 for the body) naming the field.
    max_body_bytes: int = 16 * 2**20       # request body, read no further than this
    max_json_depth: int = 32               # nesting of arrays and objects in a body
    max_n: int = 128                       # n and best_of (vLLM: VLLM_MAX_N_SEQUENCES)
    max_prompts_per_request: int = 256     # a list of prompts (or embedding inputs)
    max_prompt_tokens: Optional[int] = None  # null: max_model_len - 1
    max_stop: int = 64                     # stop strings, and stop_token_ids
    max_stop_chars: int = 1024             # characters in one stop string
    max_tokenize_chars: int = 2**20        # text /tokenize takes (whole documents, for lm-eval)
    # A client's own chat template (chat_template, chat_template_kwargs.chat_template) is
    # refused unless this is set (vLLM's --trust-request-chat-template); then it renders in a
    # child process with a time and memory limit.
    allow_request_chat_template: bool = False
    chat_template_timeout: float = 5.0     # seconds a chat template may take to render
    chat_template_max_memory_mb: int = 1024  # address space a client template may add
    # GET /tokenizer_info (vLLM's --enable-tokenizer-info-endpoint): the tokenizer's config
    # and chat template, as lm-eval's remote tokenizer reads them.
    enable_tokenizer_info_endpoint: bool = False
    # LoRA adapters served beside the base model (vLLM's --lora-modules NAME=PATH): a request
    # whose "model" is NAME runs with the PEFT adapter folder PATH; the engine's enable_lora
    # turns on (engine.max_loras adapters per step, engine.max_lora_rank their rank).
    lora_modules: List[str] = field(default_factory=list)


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

    if cfg.model.lora:
        raise ValueError(f"model.lora={cfg.model.lora!r} is the runner's; a server serves "
                         "adapters by name: serve.lora_modules=[NAME=PATH] (--lora-modules).")
    args = engine_args(cfg.model, cfg.engine, cfg.seed, ModelSource(model=model_path, kind="local"))
    if cfg.serve.lora_modules:
        args = dataclasses.replace(args, enable_lora=True)
    return dataclasses.asdict(args)


def lora_requests(lora_modules: list) -> dict:
    """serve.lora_modules (["NAME=PATH", ...]) -> {NAME: LoRARequest(NAME, i, PATH)}, ids
    1, 2, ... in order."""
    import os

    from runner.engine.lora.request import LoRARequest

    out: dict = {}
    for i, spec in enumerate(lora_modules or [], start=1):
        name, eq, path = str(spec).partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not name or not path:
            raise ValueError(f"serve.lora_modules entry {spec!r} is not NAME=PATH (vLLM's "
                             "--lora-modules sql=/path/to/adapter).")
        if name in out:
            raise ValueError(f"serve.lora_modules names {name!r} twice; give each adapter its "
                             "own name.")
        out[name] = LoRARequest(name, i, os.path.abspath(os.path.expanduser(path)))
    return out


def default_sampling(cfg: ServeRunConfig) -> dict:
    """The sampling preset as a dict of SamplingParams fields (request defaults)."""
    return to_plain(cfg.sampling)
