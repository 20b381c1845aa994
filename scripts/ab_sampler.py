"""A/B of the fused sampler inside one engine (device only): Llama-3-8B shape, dummy weights,
the throughput workload (1000 x 256/256 random prompts, temperature 1.0, ignore_eos) run
alternately with the sampler's Triton path on and off, so that both see the same process, card
and clocks.

    PYTHONPATH=. python3 scripts/ab_sampler.py [--kv-cache-dtype fp8] [--rounds 2]
"""
import argparse

from runner.engine import LLM
from runner.engine_bench import model_folder, random_prompts, run_throughput

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="llama3_8b")
ap.add_argument("--kv-cache-dtype", default="fp8")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
args = ap.parse_args()

llm = LLM(model_folder(args.model), load_format="dummy", dtype="bfloat16",
          skip_tokenizer_init=True, max_num_seqs=512,
          max_num_batched_tokens=args.max_num_batched_tokens,
          kv_cache_dtype=args.kv_cache_dtype, gpu_memory_utilization=0.9)
sampler = llm.llm_engine.executor.model_runner.sampler
prompts = random_prompts(1000, 256, 128000, 0)
run_throughput(llm, prompts[:64], 32)                     # warm-up: compiles both paths' kernels
sampler.use_triton = False
run_throughput(llm, prompts[:64], 32)
for r in range(args.rounds):
    for fused in (True, False):
        sampler.use_triton = fused
        res = run_throughput(llm, prompts, 256)
        print(f"round {r} sampler {'fused' if fused else 'torch'}: "
              f"{res['total_tokens_per_s']:,.0f} total tokens/s ({res['elapsed_s']:.2f} s)",
              flush=True)
