"""Engine benchmarks' evaluation workloads, for automatic prefix caching (runner.engine_bench
--workload prefix | mc; the module docstring there describes both): their prompts, built as
../shared/peers/vllm_peer.py builds them, and timed generate() calls that report the prefix
cache's queries and hits of just the timed run."""
from __future__ import annotations

import random
import time

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peer_rng_prompts(rng: random.Random, n: int, input_len: int, vocab: int) -> list[list[int]]:
    """vllm_peer.py's random prompts: ids in [10, vocab - 10)."""
    return [[rng.randrange(10, vocab - 10) for _ in range(input_len)] for _ in range(n)]


def _prefix_stats(llm) -> dict:
    stats = llm.llm_engine.get_stats()
    return {k: stats[k] for k in ("prefix_cache_queries", "prefix_cache_hits",
                                  "num_prompt_tokens", "num_steps")}


def _timed_generate(llm, prompts: list, sp) -> tuple[list, float, dict]:
    """generate() timed, with the prefix-cache counters and computed prompt tokens of just
    this run."""
    before = _prefix_stats(llm)
    _sync()
    start = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    _sync()
    elapsed = time.perf_counter() - start
    after = _prefix_stats(llm)
    delta = {k: after[k] - before[k] for k in after}
    delta["computed_prompt_tokens"] = delta.pop("num_prompt_tokens")
    delta["prefix_cache_hit_rate"] = (delta["prefix_cache_hits"] / delta["prefix_cache_queries"]
                                      if delta["prefix_cache_queries"] else 0.0)
    return outs, elapsed, delta


def run_prefix(llm, prefix_len: int, input_len: int, output_len: int, num_prompts: int,
               vocab: int, seed: int) -> dict:
    """The shared-prefix workload, prompts as vllm_peer.py's `prefix` builds them."""
    from runner.engine import SamplingParams
    sp = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=output_len,
                        detokenize=False)
    rng = random.Random(seed)
    shared = [rng.randrange(10, vocab - 10) for _ in range(prefix_len)]

    def own(n):
        return [{"prompt_token_ids": shared + p}
                for p in peer_rng_prompts(rng, n, input_len, vocab)]

    llm.generate(own(min(64, num_prompts)), sp, use_tqdm=False)   # warm-up (caches the prefix)
    llm.reset_prefix_cache()
    outs, elapsed, cache = _timed_generate(llm, own(num_prompts), sp)
    gen = sum(len(o.outputs[0].token_ids) for o in outs)
    n_in = num_prompts * (prefix_len + input_len)
    return {"elapsed_s": elapsed, "num_requests": num_prompts, "prefix_len": prefix_len,
            "input_len": input_len, "prompt_tokens": n_in, "output_tokens": gen,
            "total_tokens_per_s": (n_in + gen) / elapsed,
            "requests_per_s": num_prompts / elapsed, **cache}


def mc_prompts(rng: random.Random, num_items: int, context_len: int, choice_len: int,
               num_choices: int, vocab: int) -> list[dict]:
    """num_items items of one context and num_choices continuations each, flattened: item i's
    choices are prompts i * num_choices ... (i + 1) * num_choices - 1."""
    prompts = []
    for _ in range(num_items):
        ctx = [rng.randrange(10, vocab - 10) for _ in range(context_len)]
        prompts += [{"prompt_token_ids": ctx + [rng.randrange(10, vocab - 10)
                                                for _ in range(choice_len)]}
                    for _ in range(num_choices)]
    return prompts


def run_mc(llm, num_items: int, context_len: int, choice_len: int, num_choices: int,
           vocab: int, seed: int) -> dict:
    """The multiple-choice workload: every choice's prompt logprobs, one token out."""
    from runner.engine import SamplingParams
    sp = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
    rng = random.Random(seed)
    shape = (context_len, choice_len, num_choices, vocab)
    llm.generate(mc_prompts(rng, min(16, num_items), *shape), sp, use_tqdm=False)   # warm-up
    llm.reset_prefix_cache()
    prompts = mc_prompts(rng, num_items, *shape)
    outs, elapsed, cache = _timed_generate(llm, prompts, sp)
    n_in = sum(len(p["prompt_token_ids"]) for p in prompts)
    if any(len(o.prompt_logprobs) != len(p["prompt_token_ids"]) for o, p in zip(outs, prompts)):
        raise RuntimeError("a request came back without a logprob for every prompt token")
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"elapsed_s": elapsed, "num_items": num_items, "num_requests": len(prompts),
            "context_len": context_len, "choice_len": choice_len, "num_choices": num_choices,
            "prompt_tokens": n_in, "output_tokens": n_out,
            "total_tokens_per_s": (n_in + n_out) / elapsed, "items_per_s": num_items / elapsed,
            "requests_per_s": len(prompts) / elapsed, **cache}
