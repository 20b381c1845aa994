"""/metrics: the server's numbers in Prometheus' text format (exposition format 0.0.4).

Names follow vLLM's server (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
`vllm:prompt_tokens_total`, ...), so dashboards built for vLLM read this server too. The
engine thread keeps the counters, a gauge snapshot and the engine's get_stats()
(runner/serve/async_engine.py); the HTTP side counts requests per handler and status
(`HTTPCounter`, an ASGI middleware). Rendering reads those plain numbers only. The prefix
cache's counters (`vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`, in
tokens, as vLLM counts them) appear only when the engine's get_stats() reports
`prefix_cache_queries` / `prefix_cache_hits`.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KNOWN_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models",
               "/health", "/metrics", "/version", "/tokenize", "/detokenize", "/tokenizer_info",
               "/openapi.json")


class HTTPCounter:
    """ASGI middleware: counts every HTTP request by (handler, method, status)."""

    def __init__(self, app: Any, counts: Counter):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            handler = path if path in KNOWN_PATHS else "other"
            self.counts[(handler, scope.get("method", ""), status[0])] += 1


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def render(model_name: str, counters: Any, gauges: dict, http_counts: Counter,
           stats: Optional[dict] = None) -> str:
    lines: list[str] = []
    base = {"model_name": model_name}

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(labels)} {float(value)!r}")

    metric("vllm:num_requests_running", "gauge", "Requests being decoded (sequences).",
           [(base, gauges.get("num_requests_running", 0))])
    metric("vllm:num_requests_waiting", "gauge", "Requests waiting in the engine's queue.",
           [(base, gauges.get("num_requests_waiting", 0))])
    metric("vllm:num_requests_unfinished", "gauge", "Requests in the engine, any state.",
           [(base, gauges.get("num_unfinished_requests", 0))])
    metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache use: 1 means every block is used.",
           [(base, gauges.get("kv_cache_usage_perc", 0.0))])
    metric("vllm:kv_cache_used_blocks", "gauge", "KV-cache blocks in use.",
           [(base, gauges.get("kv_cache_used_blocks", 0))])
    metric("vllm:kv_cache_total_blocks", "gauge", "KV-cache blocks in all.",
           [(base, gauges.get("kv_cache_total_blocks", 0))])
    metric("vllm:num_preemptions_total", "counter", "Sequences preempted so far.",
           [(base, gauges.get("num_preemptions", 0))])
    metric("vllm:engine_steps_total", "counter", "Engine steps run.",
           [(base, gauges.get("num_steps", 0))])
    metric("vllm:prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
           [(base, counters.prompt_tokens)])
    metric("vllm:generation_tokens_total", "counter", "Generated tokens of finished requests.",
           [(base, counters.generation_tokens)])
    metric("vllm:request_added_total", "counter", "Requests accepted by the engine.",
           [(base, counters.requests_added)])
    finished = dict(counters.requests_finished) or {"stop": 0}
    metric("vllm:request_success_total", "counter", "Finished sequences by finish reason.",
           [({**base, "finished_reason": r}, v) for r, v in sorted(finished.items())])
    metric("vllm:request_aborted_total", "counter", "Requests aborted (client disconnects).",
           [(base, counters.requests_aborted)])
    metric("vllm:request_failed_total", "counter", "Requests the engine failed on (500s).",
           [(base, counters.requests_failed)])
    stats = stats or {}
    for key, name, help_ in (
            ("prefix_cache_queries", "vllm:prefix_cache_queries_total",
             "Prompt tokens looked up in the prefix cache."),
            ("prefix_cache_hits", "vllm:prefix_cache_hits_total",
             "Prompt tokens found in the prefix cache.")):
        if isinstance(stats.get(key), (int, float)) and not isinstance(stats.get(key), bool):
            metric(name, "counter", help_, [(base, stats[key])])
    http = sorted(http_counts.items()) or [(("/health", "GET", 200), 0)]
    metric("http_requests_total", "counter", "HTTP requests by handler, method and status.",
           [({"handler": h, "method": m, "status": str(s)}, v) for (h, m, s), v in http])
    return "\n".join(lines) + "\n"
