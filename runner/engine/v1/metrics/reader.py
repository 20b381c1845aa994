"""LLM.get_metrics(): a snapshot of the engine's metrics as vLLM 0.24's reader objects
(`vllm.v1.metrics.reader`: Metric, Counter, Gauge, Histogram, Vector).

    LLMEngine (scheduler queues, block manager books, token and preemption counters,
    prefix-cache counters) -> get_metrics_snapshot(engine, model_name) -> list[Metric],
    labels {"model_name": ..., "engine": "0"} as vLLM's

Only what the engine counts honestly is reported:
    Gauge   vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc
    Counter vllm:prompt_tokens, vllm:generation_tokens, vllm:num_preemptions,
            vllm:prefix_cache_queries, vllm:prefix_cache_hits
vLLM's latency histograms (time to first token, ...) are not kept here: no Histogram is
reported. vllm:prompt_tokens counts the prompt tokens computed (prefix-cache hits are in
vllm:prefix_cache_hits). vLLM refuses get_metrics when stat logging is off (LLM's default,
disable_log_stats=True); so does LLM.get_metrics.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Metric:
    """A metric with its key=value labels."""
    name: str
    labels: dict[str, str]


@dataclass
class Counter(Metric):
    """A monotonically increasing integer counter."""
    value: int


@dataclass
class Vector(Metric):
    """An ordered array of integer counters."""
    values: list[int]


@dataclass
class Gauge(Metric):
    """A numerical value that can go up or down."""
    value: float


@dataclass
class Histogram(Metric):
    """Observations in buckets (upper limit -> count, with a '+Inf' bucket)."""
    count: int
    sum: float
    buckets: dict[str, int]


def get_metrics_snapshot(engine, model_name: str) -> list[Metric]:
    labels = {"model_name": model_name, "engine": "0"}
    sched, bm = engine.scheduler, engine.block_manager
    used = 1.0 - bm.num_free_blocks / bm.num_blocks if bm.num_blocks else 0.0
    prefix = sched.prefix_cache_stats
    return [
        Gauge("vllm:num_requests_running", dict(labels), float(len(sched.running))),
        Gauge("vllm:num_requests_waiting", dict(labels),
              float(len(sched.waiting) + len(getattr(sched, "swapped", ())))),
        Gauge("vllm:kv_cache_usage_perc", dict(labels), used),
        Counter("vllm:prompt_tokens", dict(labels), int(sched.num_prompt_tokens)),
        Counter("vllm:generation_tokens", dict(labels), int(sched.num_generation_tokens)),
        Counter("vllm:num_preemptions", dict(labels), int(sched.num_preemptions)),
        Counter("vllm:prefix_cache_queries", dict(labels),
                int(prefix.get("prefix_cache_queries", 0))),
        Counter("vllm:prefix_cache_hits", dict(labels), int(prefix.get("prefix_cache_hits", 0))),
    ]
