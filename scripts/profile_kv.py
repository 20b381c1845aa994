"""Where a KV-bound decode step goes, bf16 vs fp8 cache (Llama-2-13B shape by default):
a decode-attention tile sweep over both cache dtypes, then a torch-profiler table of engine
decode steps at the given batch and context.

    python3 scripts/profile_kv.py [--model llama2_13b] [--batch 160] [--ctx 576] [--no-sweep]
"""
import argparse
import importlib
import time

import torch
import triton

from kernels.utils import TileConfig

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="llama2_13b")
ap.add_argument("--batch", type=int, default=160)
ap.add_argument("--ctx", type=int, default=576)
ap.add_argument("--heads", type=int, default=40)
ap.add_argument("--kv-heads", type=int, default=40)
ap.add_argument("--no-engine", action="store_true")
ap.add_argument("--no-sweep", action="store_true")
args = ap.parse_args()

pda = importlib.import_module("kernels.paged_decode_attention")
B, ctx, hk, d, bs = args.batch, args.ctx, args.kv_heads, 128, 16
nb = B * (ctx // bs + 1)
tables = torch.randperm(nb, device="cuda", dtype=torch.int32).view(B, -1)
lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
q = torch.randn(B, args.heads, d, device="cuda", dtype=torch.bfloat16)
orig = pda.decode_tile_config
for cache_dtype in () if args.no_sweep else (torch.bfloat16, torch.float8_e4m3fn):
    cache = torch.randn(2, nb, bs, hk, d, device="cuda").to(cache_dtype)
    nbytes = 2 * B * ctx * hk * d * cache.element_size()
    for bn, w, st in [(64, 4, 3), (128, 4, 3), (64, 4, 4), (32, 4, 3), (64, 4, 2),
                      (32, 4, 2), (64, 2, 2), (32, 2, 2), (128, 4, 2), (16, 2, 2)]:
        pda.decode_tile_config = lambda *a, bn=bn, w=w, st=st: TileConfig(16, bn, w, st)
        ms = triton.testing.do_bench(lambda: pda.paged_decode_attention(
            q, cache, tables, lens, 0.088, num_splits=1), return_mode="median")
        print(f"{str(cache_dtype):22s} BLOCK_N={bn:3d} warps={w} stages={st}: "
              f"{ms * 1e3:7.1f} us  {nbytes / ms / 1e9:.2f} TB/s", flush=True)
pda.decode_tile_config = orig
if args.no_engine:
    raise SystemExit

from torch.profiler import ProfilerActivity, profile  # noqa: E402

from runner.engine import LLM, SamplingParams  # noqa: E402
from runner.engine_bench import model_folder, random_prompts  # noqa: E402

for kv in ("auto", "fp8"):
    llm = LLM(model_folder(args.model), load_format="dummy", dtype="bfloat16",
              skip_tokenizer_init=True, max_num_seqs=B, max_num_batched_tokens=16384,
              kv_cache_dtype=kv, gpu_memory_utilization=0.9)
    eng = llm.llm_engine
    sp = SamplingParams(temperature=1.0, max_tokens=64, ignore_eos=True, detokenize=False)
    for i, p in enumerate(random_prompts(B, ctx, 32000, 0)):
        eng.add_request(str(i), p, sp)
    while any(s.num_output_tokens == 0 for s in eng.scheduler.running
              + list(eng.scheduler.waiting)):
        eng.step()
    for _ in range(3):
        eng.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        eng.step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 100
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            eng.step()
        torch.cuda.synchronize()
    print(f"== kv_cache_dtype={kv}: 10 decode steps, batch {B}, context ~{ctx}: "
          f"{wall_ms:.2f} ms per step (wall, without the profiler)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14,
                                    max_name_column_width=50))
    del llm, eng
    import gc
    gc.collect()
    torch.cuda.empty_cache()
