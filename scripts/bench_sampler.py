"""The sampler's fused Triton path (kernels/sampling.py) against its torch path, per call, on
the vocabulary of Llama-3-8B (128,256) with bf16 logits: random rows (temperature 1.0, as in
the throughput workload) and greedy rows, batch R in {1, 64, 512}. Times are CUDA-event medians
of REPEATS calls of `Sampler.sample` (host work included, as the engine pays it).

    PYTHONPATH=. python3 scripts/bench_sampler.py
"""
from __future__ import annotations

import statistics

import torch

from runner.engine.sampler import Sampler, SamplingRequest
from runner.engine.sampling_params import SamplingParams

VOCAB = 128256
REPEATS = 50


def time_call(fn) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch_path, fused = Sampler(gen), Sampler(gen, use_triton=True)
    for kind, temperature in (("random T=1.0", 1.0), ("greedy", 0.0)):
        params = SamplingParams(temperature=temperature, max_tokens=16)
        for rows in (1, 64, 512):
            logits = torch.randn(rows, VOCAB, device="cuda", dtype=torch.bfloat16) * 3
            reqs = [SamplingRequest(params, [1, 2], [3]) for _ in range(rows)]
            t_torch = time_call(lambda: torch_path.sample(logits, reqs))
            t_fused = time_call(lambda: fused.sample(logits, reqs))
            same = ""
            if temperature == 0.0:
                a, b = torch_path.sample(logits, reqs), fused.sample(logits, reqs)
                same = (f"  same tokens: {bool(torch.equal(a.token_ids, b.token_ids))}, "
                        f"max |dlogprob| {(a.logprobs - b.logprobs).abs().max().item():.1e}, "
                        f"same ranks: {bool(torch.equal(a.ranks, b.ranks))}")
            print(f"{kind:13s} R={rows:4d}: torch {t_torch:7.3f} ms  fused {t_fused:7.3f} ms  "
                  f"({t_torch / t_fused:5.1f}x){same}", flush=True)


if __name__ == "__main__":
    main()
