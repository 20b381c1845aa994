"""Periodic engine stats in the log, as vLLM's LoggingStatLogger writes them.

LLM(disable_log_stats=False) (EngineArgs' log_stats) makes LLMEngine.step() call
`StatLogger.maybe_log()` after each step; every `interval_s` seconds (vLLM's default
VLLM_LOG_STATS_INTERVAL, 10 s) one INFO line on the "runner.engine" logger gives the prompt and
generation throughput since the last line, the running / waiting request counts, the KV cache's
usage and the prefix cache's hit rate. It reads the scheduler's and block manager's counters;
it changes nothing.
"""
from __future__ import annotations

import logging
import time

logger = logging.getLogger("runner.engine")

LOG_STATS_INTERVAL_S = 10.0


class StatLogger:
    def __init__(self, scheduler, block_manager, interval_s: float = LOG_STATS_INTERVAL_S):
        self.scheduler = scheduler
        self.block_manager = block_manager
        self.interval_s = interval_s
        self._last = (time.monotonic(), 0, 0)
        self.num_lines = 0

    def maybe_log(self) -> bool:
        """Log one stats line if interval_s has passed since the last; returns whether it did."""
        now = time.monotonic()
        then, prompt0, gen0 = self._last
        if now - then < self.interval_s:
            return False
        sched, bm = self.scheduler, self.block_manager
        prompt, gen = sched.num_prompt_tokens, sched.num_generation_tokens
        dt = max(now - then, 1e-9)
        used = 1.0 - bm.num_free_blocks / bm.num_blocks
        stats = sched.prefix_cache_stats
        queries = stats.get("prefix_cache_queries", 0)
        hit_rate = stats.get("prefix_cache_hits", 0) / queries if queries else 0.0
        logger.info("Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f "
                    "tokens/s, Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, "
                    "Prefix cache hit rate: %.1f%%", (prompt - prompt0) / dt, (gen - gen0) / dt,
                    len({s.group.request_id for s in sched.running}),
                    len({s.group.request_id for s in sched.waiting}), 100 * used,
                    100 * hit_rate)
        self._last = (now, prompt, gen)
        self.num_lines += 1
        return True
