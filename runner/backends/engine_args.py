"""The one place that turns a run's config into the engine's arguments, for every mode.

    ModelConfig + EngineConfig + run seed + ModelSource  --engine_args-->  EngineArgs
      model identity      <- ModelConfig (MODEL_ENGINE_FIELDS), the model from the ModelSource
      seed                <- the run's seed
      everything else     <- EngineConfig, field for field (BACKEND_KEYS are the backend's own)

eval, generate, bench and embed all call `engine_args`, so `engine.block_size=32` means 32 in
each of them (tests/runner/test_engine_args.py composes every mode and checks). Two values are
derived where the config leaves them open:
  - a model shape with random weights (ModelSource kind "shape", a config.json and nothing
    else) has no tokenizer to load: skip_tokenizer_init=True unless model.tokenizer names one;
  - on the CPU, engine.max_num_batched_tokens=null means CPU_MAX_NUM_BATCHED_TOKENS (2048, as
    engine=cpu_small), not the engine's 8192: one step of 8192 prompt tokens takes about a
    minute on a CPU core, and the default run's 80 prompts (8,581 tokens) then prefilled in one
    silent step; at 2048 a step stays seconds long and the progress bar moves between them
    (vLLM also picks its token budget by platform).

CPU threads are a property of the process, not an engine argument: `cpu_threads` picks the
count (the run's `cpu_threads`, else OMP_NUM_THREADS, else half the usable cores, at most 8) and
`apply_cpu_threads` sets it before the local engine is built on the CPU.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from runner.schemas import (BACKEND_KEYS, MODEL_ENGINE_FIELDS, EngineConfig, ModelConfig,
                            to_plain)

# Without a setting, at most this many threads: torch's intra-op gains flatten out beyond it for
# the models a CPU runs, and every thread past the free cores costs far more than it brings.
MAX_AUTO_CPU_THREADS = 8
# The token budget of a CPU step when engine.max_num_batched_tokens is null (module docstring).
CPU_MAX_NUM_BATCHED_TOKENS = 2048


def engine_args(model_cfg: ModelConfig, engine_cfg: EngineConfig, seed: int, source):
    """EngineArgs for runner.engine from the composed config (`source`: a ModelSource)."""
    from runner.engine import EngineArgs

    kwargs = {name: getattr(model_cfg, name) for name in MODEL_ENGINE_FIELDS}
    kwargs["model"] = source.model
    kwargs["seed"] = seed
    plain = to_plain(engine_cfg)
    for key in BACKEND_KEYS:
        plain.pop(key)
    kwargs.update(plain)
    if getattr(model_cfg, "lora", None):
        kwargs["enable_lora"] = True        # model.lora: the adapter needs the LoRA layers
    if not source.has_tokenizer and model_cfg.tokenizer is None:
        kwargs["skip_tokenizer_init"] = True
    if kwargs["max_num_batched_tokens"] is None and kwargs["enable_chunked_prefill"] is not False \
            and runs_on_cpu(kwargs["device"]):
        kwargs["max_num_batched_tokens"] = CPU_MAX_NUM_BATCHED_TOKENS
    unknown = set(kwargs) - {f.name for f in dataclasses.fields(EngineArgs)}
    if unknown:
        # The schema test catches this first; a clear line beats a TypeError deep in the engine.
        raise ValueError(f"engine settings {sorted(unknown)} are not arguments of this engine's "
                         "EngineArgs; see runner/schemas.py EngineConfig")
    return EngineArgs(**kwargs)


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_threads(configured: Optional[int]) -> int:
    """The torch thread count for a CPU run: the config's, OMP_NUM_THREADS, or half the cores."""
    if configured is not None:
        return configured
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    # Half the cores: the tokenizer, the detokenizer and the async output thread need some, and
    # on a shared machine torch's default (all cores, spinning) ran about 10x slower than one.
    return max(1, min(MAX_AUTO_CPU_THREADS, usable_cpus() // 2))


def runs_on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def apply_cpu_threads(n: int) -> None:
    """torch's intra-op threads in this process, and OMP_NUM_THREADS for workers it starts."""
    import torch

    torch.set_num_threads(n)
    # tensor-parallel workers on the CPU are new processes: they read the variable at start
    os.environ["OMP_NUM_THREADS"] = str(n)
