"""engine_bench's evaluation workloads on CPU with a tiny model: `prefix` (a shared few-shot
prefix, prompts built as ../shared/peers/vllm_peer.py builds them) and `mc` (multiple-choice
prompt logprobs), with and without prefix caching, recording the timed run's cache hits."""
from __future__ import annotations

import json
import random

import pytest
import torch

from runner import engine_bench, engine_bench_eval



def _bench(tmp_path, model, *args):
    argv = ["--model", model, "--dtype", "float32", "--max-num-seqs", "16",
            "--max-num-batched-tokens", "128", "--out", str(tmp_path), *args]
    result = engine_bench.main(argv)
    path = next(tmp_path.rglob("benchmark.json"))
    assert json.loads(path.read_text())["engine"]["total_tokens_per_s"] > 0
    path.unlink()
    return result["engine"]


def test_prefix_workload_caches_the_shared_prefix(tiny_llama, tmp_path):
    args = ["--workload", "prefix", "--num-prompts", "12", "--prefix-len", "48",
            "--input-len", "8", "--output-len", "4"]
    on = _bench(tmp_path, tiny_llama, *args)
    off = _bench(tmp_path, tiny_llama, *args, "--no-prefix-caching")
    assert on["num_requests"] == 12 and on["prompt_tokens"] == 12 * 56
    assert on["enable_prefix_caching"] and not off["enable_prefix_caching"]
    # the warm-up's cache was reset: the first prompt computes the prefix, the others hit it
    assert on["prefix_cache_queries"] == 12 * 56
    assert on["prefix_cache_hits"] >= 11 * 48 and off["prefix_cache_hits"] == 0
    assert on["computed_prompt_tokens"] < off["computed_prompt_tokens"] == 12 * 56


def test_prefix_prompts_are_the_peers(monkeypatch):
    """vllm_peer.py draws the shared prefix, then 64 warm-up prompts, then the timed ones,
    ids in [10, vocab - 10) from random.Random(seed)."""
    seen = []

    class FakeLLM:
        def generate(self, prompts, sp, use_tqdm=False):
            seen.append([p["prompt_token_ids"] for p in prompts])

            class Out:
                outputs = [type("C", (), {"token_ids": [1] * sp.max_tokens})()]
            return [Out() for _ in prompts]

        def reset_prefix_cache(self):
            return True

    monkeypatch.setattr(engine_bench_eval, "_prefix_stats", lambda llm: dict.fromkeys(
        ("prefix_cache_queries", "prefix_cache_hits", "num_prompt_tokens", "num_steps"), 0))
    engine_bench_eval.run_prefix(FakeLLM(), 5, 3, 2, 70, 1000, seed=0)
    rng = random.Random(0)
    shared = [rng.randrange(10, 990) for _ in range(5)]
    warm = [shared + [rng.randrange(10, 990) for _ in range(3)] for _ in range(64)]
    timed = [shared + [rng.randrange(10, 990) for _ in range(3)] for _ in range(70)]
    assert seen == [warm, timed]


def test_mc_workload_serves_prompt_logprobs_from_the_cache(tiny_llama, tmp_path):
    args = ["--workload", "mc", "--num-prompts", "6", "--context-len", "64",
            "--choice-len", "8", "--num-choices", "4"]
    on = _bench(tmp_path, tiny_llama, *args)
    off = _bench(tmp_path, tiny_llama, *args, "--no-prefix-caching")
    assert on["num_requests"] == off["num_requests"] == 24
    assert off["computed_prompt_tokens"] == 24 * 72
    # every item's context once, then each other choice's own tokens (+ one position)
    assert on["computed_prompt_tokens"] <= 6 * (72 + 3 * 9)
    assert on["prefix_cache_hit_rate"] > 0.5


@pytest.mark.parametrize("bad", [["--workload", "nope"],
                                 ["--workload", "beam", "--lora-adapters", "2"],
                                 ["--lora-adapters", "-1"], ["--lora-rank", "0"],
                                 ["--lora-adapters", "2", "--hf-num-prompts", "8"]])
def test_unknown_workload(bad):
    with pytest.raises(SystemExit):
        engine_bench.parse_args(bad)


def test_lora_workload_runs_mixed_adapters(tiny_llama, tmp_path):
    """--lora-adapters: random adapters the engine loads (PEFT layout), one per prompt; they
    change the model's logprobs, so the benchmark measures real adapter work."""
    from transformers import AutoConfig

    from runner.engine import LLM, SamplingParams
    from runner.engine_bench_lora import lora_requests, write_random_adapters

    folders = write_random_adapters(AutoConfig.from_pretrained(tiny_llama), 2, 8,
                                    str(tmp_path / "adapters"), dtype=torch.float32)
    loras = lora_requests(folders, 3)
    assert [r.lora_int_id for r in loras] == [1, 2, 1]
    llm = LLM(tiny_llama, dtype="float32", device="cpu", enable_lora=True, max_loras=2,
              max_lora_rank=8, max_model_len=64)
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=0)
    prompt = [{"prompt_token_ids": [5, 6, 7, 8]}]
    base, one, two = (llm.generate(prompt, sp, use_tqdm=False, lora_request=r)[0]
                      for r in (None, loras[0], loras[1]))
    lps = [[d[t].logprob for d, t in zip(o.prompt_logprobs[1:], o.prompt_token_ids[1:])]
           for o in (base, one, two)]
    assert lps[0] != lps[1] and lps[1] != lps[2]
    res = engine_bench.main(["--model", tiny_llama, "--dtype", "float32", "--max-num-seqs", "8",
                             "--max-num-batched-tokens", "128", "--out", str(tmp_path / "b"),
                             "--num-prompts", "6", "--input-len", "8", "--output-len", "4",
                             "--lora-adapters", "2", "--lora-rank", "8"])
    assert res["lora"]["adapters"] == 2 and res["engine"]["num_requests"] == 6
