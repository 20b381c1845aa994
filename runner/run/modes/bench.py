"""mode=bench: vLLM's benchmark workloads on random token prompts, through the run's backend.

    python -m runner mode=bench                                 # the default model, as it is
    python -m runner mode=bench model=llama3_8b engine.load_format=dummy \
        bench.workload=throughput bench.num_prompts=1000 bench.input_len=256 bench.output_len=256
    python -m runner mode=bench model=llama3_8b engine.load_format=dummy \
        bench.workload=latency bench.batch_size=1 bench.compare_eager=true

    prepare   checks bench.* (runner.schemas.BenchConfig); the workload is the fingerprint
    execute   random prompts (runner.engine_bench.random_prompts, ignore_eos, fixed lengths)
              -> backend.submit / results, timed:
                throughput  every prompt at once, after a small warm-up
                beam        the same with in-engine beam search (best_of = bench.beam_width)
                latency     one batch of bench.batch_size, warmup + iters times; the median;
                            compare_eager adds an eager engine (CUDA only) beside it
              -> benchmark.json {"engine": numbers + the backend's stats, "engine_args", ...},
                 metrics.json {"scores": tokens/s}, so sweeps and their summary read it

The engine is the run's backend, built from the composed engine group like every other mode's
(runner/backends/engine_args.py): engine.block_size=32 means 32 here too. With
engine.load_format=dummy a known shape (llama2_7b/13b/70b, llama3_8b) needs no download.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import statistics
import time

from runner.benchmark import peak_memory
from runner.run.plan import Outcome, Plan
from runner.schemas import to_plain
from runner.tasks.api import Request
from runner.validation import ConfigError

WORKLOADS = ("throughput", "latency", "beam")
POSITIVE = ("num_prompts", "input_len", "output_len", "batch_size", "iters", "beam_width")


def prepare(cfg, sweep_job: bool = False) -> Plan:
    """The workload's plan; `sweep_job` changes nothing here (bench runs no task)."""
    b = cfg.bench
    if b.workload not in WORKLOADS:
        raise ConfigError(f"bench.workload={b.workload!r}: allowed: {', '.join(WORKLOADS)}")
    for name in POSITIVE:
        if getattr(b, name) < 1:
            raise ConfigError(f"bench.{name}={getattr(b, name)} must be >= 1")
    if b.warmup < 0 or b.hf_num_prompts < 0:
        raise ConfigError("bench.warmup and bench.hf_num_prompts must be >= 0")
    workload = to_plain(b)
    fingerprint = hashlib.sha256(json.dumps(workload, sort_keys=True).encode()).hexdigest()
    latency = b.workload == "latency"
    metrics = ["output_tokens_per_s", "median_latency_s"] if latency else \
        ["total_tokens_per_s", "output_tokens_per_s"]
    return Plan(work=b, fingerprint=fingerprint, manifest={"workload": workload},
                id_fields={"sampling": f"bench-{b.workload}", "dataset": "random"},
                metrics=metrics, primary_metric=metrics[0])


def check_backend(plan: Plan, backend) -> None:
    if backend.is_embedding_model:
        raise ConfigError("the model is an embedding model; mode=bench runs generative models")
    b = plan.work
    if backend.kind == "ray" and (b.compare_eager or b.hf_num_prompts):
        raise ConfigError("bench.compare_eager and bench.hf_num_prompts build a second engine "
                          "beside the run's: they need the local backend, not "
                          "engine.data_parallel_size > 1 / engine.backend=ray")
    if b.compare_eager and not str(backend.stats().get("device", "")).startswith("cuda"):
        raise ConfigError("bench.compare_eager=true compares CUDA graphs with eager mode: it "
                          "needs the local engine on a CUDA device")


def _params(output_len: int, beam_width: int = 0):
    from runner.engine import SamplingParams

    if beam_width:
        return SamplingParams(n=1, best_of=beam_width, use_beam_search=True, temperature=0.0,
                              ignore_eos=True, max_tokens=output_len)
    return SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=output_len,
                          detokenize=False)


def _timed(backend, prompts: list, params, tag: str) -> tuple[float, list]:
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        backend.submit(f"{tag}-{i}", Request(prompt_token_ids=p["prompt_token_ids"],
                                             params=params))
    done: dict = {}
    while len(done) < len(prompts):
        for out in backend.results():
            if out.finished:
                done[out.request_id] = out
    return time.perf_counter() - start, list(done.values())


def _counts(elapsed: float, outs: list) -> dict:
    n_in = sum(len(o.prompt_token_ids or []) for o in outs)
    n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"elapsed_s": elapsed, "num_requests": len(outs), "prompt_tokens": n_in,
            "output_tokens": n_out, "requests_per_s": len(outs) / elapsed,
            "total_tokens_per_s": (n_in + n_out) / elapsed,
            "output_tokens_per_s": n_out / elapsed}


def _latency(backend, b, prompts: list, tag: str) -> dict:
    params = _params(b.output_len)
    times = []
    for i in range(b.warmup + b.iters):
        elapsed, _ = _timed(backend, prompts, params, f"{tag}{i}")
        if i >= b.warmup:
            times.append(elapsed)
    med = statistics.median(times)
    return {"median_latency_s": med, "p90_latency_s": sorted(times)[int(0.9 * (len(times) - 1))],
            "latencies_s": times, "output_tokens_per_s": b.batch_size * b.output_len / med,
            **backend.stats()}


def _hf(backend, b, prompts: list, device: str) -> dict:
    import torch

    from runner.engine_bench import run_hf_throughput

    info = backend.model_info()
    if not info.get("local_path"):
        raise ConfigError("bench.hf_num_prompts needs the local engine (a model folder to give "
                          "HF transformers)")
    dtype = getattr(torch, str(backend.stats().get("dtype", "float32")))
    return run_hf_throughput(info["local_path"], prompts[:b.hf_num_prompts], b.output_len,
                             b.hf_batch_size, dtype, torch.device(device))


def execute(plan: Plan, session) -> Outcome:
    from runner.engine_bench import random_prompts

    b, backend, cfg = plan.work, session.backend, session.cfg
    vocab = backend.model_info().get("vocab_size") or len(backend.tokenizer)
    device = str(backend.stats().get("device", "cpu"))
    result: dict = {"command": " ".join(session.manifest.get("command") or []),
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "device": device, "model": cfg.model.name, "workload": to_plain(b),
                    "engine_args": session.manifest.get("backend", {}).get("engine_args")}
    if b.workload == "latency":
        prompts = random_prompts(b.batch_size, b.input_len, vocab, cfg.seed)
        result["engine"] = _latency(backend, b, prompts, "lat")
        if b.compare_eager:
            eager = session.make_backend({"enforce_eager": True})
            try:
                result["eager"] = _latency(eager, b, prompts, "eager")
            finally:
                eager.close()
            result["cuda_graphs_speedup"] = (result["eager"]["median_latency_s"]
                                             / result["engine"]["median_latency_s"])
        main = result["engine"]
        scores = {"output_tokens_per_s": main["output_tokens_per_s"],
                  "median_latency_s": main["median_latency_s"]}
    else:
        beam = b.beam_width if b.workload == "beam" else 0
        prompts = random_prompts(b.num_prompts, b.input_len, vocab, cfg.seed)
        # a warm-up of the same shape, smaller: the timed run meets no first-time step
        _timed(backend, prompts[:min(len(prompts), 64)], _params(min(b.output_len, 8), beam),
               "warm")
        elapsed, outs = _timed(backend, prompts, _params(b.output_len, beam), "run")
        main = {**_counts(elapsed, outs), **({"beam_width": beam} if beam else {}),
                **backend.stats()}
        result["engine"] = main
        if b.hf_num_prompts and not beam:
            result["hf_transformers"] = _hf(backend, b, prompts, device)
            result["speedup_vs_hf"] = (main["total_tokens_per_s"]
                                       / result["hf_transformers"]["total_tokens_per_s"])
        scores = {"total_tokens_per_s": main["total_tokens_per_s"],
                  "output_tokens_per_s": main["output_tokens_per_s"]}
    result["memory"] = peak_memory(device)
    metrics = {"metric": f"bench_{b.workload}", "scores": scores,
               "num_items": main.get("num_requests", b.batch_size)}
    summary = ", ".join(f"{k}={v:.2f}" for k, v in scores.items())
    return Outcome(metrics=metrics, benchmark=result, summary=summary)
