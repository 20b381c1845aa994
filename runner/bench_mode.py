"""mode=bench: the engine's benchmark workloads, driven by the composed run config.

    python -m runner mode=bench model=llama3_8b engine.load_format=dummy \
        bench.workload=throughput bench.num_prompts=1000 bench.input_len=256 bench.output_len=256
    python -m runner mode=bench model=llama3_8b engine.load_format=dummy \
        bench.workload=beam bench.beam_width=4 bench.num_prompts=100
    python -m runner mode=bench model=llama3_8b engine.load_format=dummy \
        bench.workload=latency bench.batch_size=1 bench.input_len=32 bench.output_len=128 \
        bench.compare_eager=true

The model group picks the weights (with engine.load_format=dummy a known shape such as
llama3_8b needs no download: runner.engine_bench.MODEL_SHAPES), the engine group the engine
arguments, the bench group the workload (runner.schemas.BenchConfig). The run folder
<output_root>/<experiment>/<time>_<model>_bench_<workload>/ gets config.yaml, manifest.json,
benchmark.json and run.log; the dataset and sampling groups are not used.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time

import yaml

from runner import manifest as mf
from runner.engine_bench import MODEL_SHAPES, run as run_workload
from runner.model_source import resolve_model_source
from runner.schemas import RunConfig, to_plain
from runner.store import RunStore
from runner.validation import ConfigError


def _bench_args(cfg: RunConfig) -> argparse.Namespace:
    b, e, m = cfg.bench, cfg.engine, cfg.model
    if b.workload not in ("throughput", "latency", "beam"):
        raise ConfigError(f"bench.workload={b.workload!r}: allowed: throughput, latency, beam")
    for name in ("num_prompts", "input_len", "output_len", "batch_size", "iters", "beam_width"):
        if getattr(b, name) < 1:
            raise ConfigError(f"bench.{name}={getattr(b, name)} must be >= 1")
    if e.load_format == "dummy" and m.name in MODEL_SHAPES:
        model = m.name                      # config.json of the known shape, random weights
    else:
        model = resolve_model_source(m).model
    dtype = m.dtype if m.dtype not in ("auto", None) else (
        "bfloat16" if e.device != "cpu" and _has_cuda() else "float32")
    dtype = {"half": "float16", "float": "float32", "bf16": "bfloat16"}.get(dtype, dtype)
    return argparse.Namespace(
        model=model, workload=b.workload, num_prompts=b.num_prompts, input_len=b.input_len,
        output_len=b.output_len, batch_size=b.batch_size, warmup=b.warmup, iters=b.iters,
        dtype=dtype, load_format=e.load_format,
        max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
        max_model_len=m.max_model_len, gpu_memory_utilization=e.gpu_memory_utilization,
        kernel_backend=e.kernel_backend, enforce_eager=bool(e.enforce_eager),
        tensor_parallel_size=e.tensor_parallel_size,
        disable_async_output_proc=bool(e.disable_async_output_proc),
        async_scheduling=bool(e.async_scheduling), kv_cache_dtype=e.kv_cache_dtype,
        disable_custom_all_reduce=bool(e.disable_custom_all_reduce),
        distributed_timeout_s=e.distributed_timeout_s,
        quantization=m.quantization, cpu_offload_gb=e.cpu_offload_gb,
        compare_eager=b.compare_eager, hf_num_prompts=b.hf_num_prompts,
        hf_batch_size=b.hf_batch_size, beam_width=b.beam_width, seed=cfg.seed, command=None)


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def run_bench(cfg: RunConfig, command: str):
    from runner.app import RunResult
    args = _bench_args(cfg)
    args.command = command
    run_id = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{cfg.model.name}_bench_{args.workload}"
    store = RunStore(os.path.join(cfg.output_root, cfg.experiment, run_id))
    store.create()
    store.write_text("config.yaml", yaml.safe_dump(to_plain(cfg), sort_keys=False))
    manifest = {"run_id": run_id, "experiment": cfg.experiment, "mode": "bench",
                "status": "running", "created": mf.now_iso(), "command": command,
                "git": mf.git_state(), "packages": mf.package_versions(),
                "hardware": mf.hardware(), "seeds": {"seed": cfg.seed}}
    store.write_json("manifest.json", manifest)
    t0 = time.perf_counter()
    try:
        result = run_workload(args)
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                        updated=mf.now_iso())
        store.write_json("manifest.json", manifest)
        raise
    store.write_json("benchmark.json", result)
    main = result.get("engine") or result.get("cuda_graphs") or result.get("eager") or {}
    line = (f"{args.workload}: {main.get('total_tokens_per_s', 0):.1f} total tokens/s, "
            f"{main.get('output_tokens_per_s', 0):.1f} output tokens/s "
            f"in {time.perf_counter() - t0:.1f} s")
    store.write_text("run.log", line + "\n")
    manifest.update(status="completed", updated=mf.now_iso())
    store.write_json("manifest.json", manifest)
    return RunResult(run_dir=str(store.path("")).rstrip("/"), run_id=run_id, status="completed",
                     metrics={"scores": {k: v for k, v in main.items()
                                         if k in ("total_tokens_per_s", "output_tokens_per_s")}})
