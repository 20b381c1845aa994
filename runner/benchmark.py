"""benchmark.json: throughput, latency percentiles and peak memory of one generation session.

Data flow: the request loop (runner/run/loop.py) feeds every finished RequestOutput to
`BenchmarkRecorder.add` as it comes out of the backend; `finish(engine_stats)` turns their
RequestMetrics (wall-clock times from time.time()) into:

    ttft  = first_token_time - arrival_time                 (time to first token)
    e2e   = finished_time (else last_token_time) - arrival_time
    tpot  = (e2e - ttft) / (output tokens - 1)              (time per output token, after the
                                                              first; requests of 1 token have none)
    queue = time_in_queue (else first_scheduled_time - arrival_time)

and throughput over the session's wall time (first arrival to last finish). Output tokens count
every completion of a request (n > 1, beams). Peak memory is the process RSS high-water mark on
CPU and torch.cuda.max_memory_allocated on CUDA. Only the prompts generated in this session
count: a resumed run reports the part it ran.
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Any, Optional

PERCENTILES = (50, 90, 95, 99)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> Optional[dict]:
    if not values:
        return None
    out = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    out["count"] = len(values)
    return out


def peak_memory(device: str) -> dict:
    """{"rss_peak_bytes": ..., "cuda_max_allocated_bytes": ...} for what this process used."""
    # ru_maxrss is kilobytes on Linux (bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    out: dict[str, Any] = {"rss_peak_bytes": rss_bytes}
    torch = sys.modules.get("torch")
    if torch is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        out["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    out["peak_bytes"] = out.get("cuda_max_allocated_bytes", rss_bytes)
    out["kind"] = "cuda_max_allocated" if "cuda_max_allocated_bytes" in out else "rss"
    return out


class BenchmarkRecorder:
    """Collects per-request timings as requests finish; `finish` writes the summary dict."""

    def __init__(self) -> None:
        self.start_time = time.time()
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.e2e: list[float] = []
        self.queue: list[float] = []
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.num_requests = 0
        self.first_arrival: Optional[float] = None
        self.last_finish: Optional[float] = None

    def add(self, out: Any) -> None:
        self.num_requests += 1
        self.prompt_tokens += len(out.prompt_token_ids or [])
        n_out = [len(c.token_ids) for c in out.outputs]
        self.output_tokens += sum(n_out)
        m = getattr(out, "metrics", None)
        if m is None or m.arrival_time is None:
            return
        arrival = m.arrival_time
        finish = m.finished_time or m.last_token_time or time.time()
        self.first_arrival = arrival if self.first_arrival is None else min(self.first_arrival, arrival)
        self.last_finish = finish if self.last_finish is None else max(self.last_finish, finish)
        e2e = finish - arrival
        self.e2e.append(e2e)
        if m.first_token_time is not None:
            ttft = m.first_token_time - arrival
            self.ttft.append(ttft)
            longest = max(n_out) if n_out else 0
            if longest > 1:
                self.tpot.append((e2e - ttft) / (longest - 1))
        if getattr(m, "time_in_queue", None) is not None:
            self.queue.append(m.time_in_queue)
        elif getattr(m, "first_scheduled_time", None) is not None:
            self.queue.append(m.first_scheduled_time - arrival)

    def finish(self, *, engine_stats: Optional[dict], device: str, resumed: int,
               load_seconds: Optional[float] = None) -> dict:
        end = self.last_finish or time.time()
        start = self.first_arrival or self.start_time
        wall = max(end - start, 1e-9) if self.num_requests else 0.0
        per_s = (lambda x: x / wall) if wall > 0 else (lambda x: None)
        return {
            "device": device,
            "num_requests": self.num_requests,
            "num_resumed": resumed,
            "wall_time_s": wall,
            "model_load_s": load_seconds,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "throughput": {
                "requests_per_s": per_s(self.num_requests),
                "output_tokens_per_s": per_s(self.output_tokens),
                "total_tokens_per_s": per_s(self.prompt_tokens + self.output_tokens),
            },
            "latency_s": {
                "ttft": summarize(self.ttft),
                "tpot": summarize(self.tpot),
                "e2e": summarize(self.e2e),
                "queue": summarize(self.queue),
            },
            "memory": peak_memory(device),
            "engine_stats": engine_stats or {},
        }
