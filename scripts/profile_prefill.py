"""Profile prefill steps of a real-shape model on the GPU: which kernels take the time?

    python3 scripts/profile_prefill.py llama3_8b 1280 8192 [--prefix-caching]

Queues 64 random prompts of the given length (no shared prefix, prefix caching off unless asked),
steps past warm-up, then profiles five prefill steps of max_num_batched_tokens tokens each and
prints the CUDA kernel table and the step time, so the prefill rate (tokens/s) can be set beside
the matmul roofline.
"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from runner.engine import LLM, SamplingParams
from runner.engine_bench import model_folder, random_prompts

model, plen, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = LLM(model_folder(model), load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
          max_num_seqs=512, max_num_batched_tokens=budget,
          enable_prefix_caching="--prefix-caching" in sys.argv)
eng = llm.llm_engine
sp = SamplingParams(temperature=1.0, max_tokens=1, ignore_eos=True, detokenize=False)
for i, p in enumerate(random_prompts(64, plen, 32000, 0)):
    eng.add_request(str(i), p, sp)
for _ in range(3):
    eng.step()
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(5):
    eng.step()
torch.cuda.synchronize()
dt = (time.perf_counter() - t0) / 5
print(f"PREFILL step {dt * 1e3:.2f} ms for {budget} tokens: {budget / dt:,.0f} tok/s")
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        eng.step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=70))
