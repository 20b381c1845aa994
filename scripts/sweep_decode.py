"""Decode-attention tile sweep at the throughput workload's shape, and a host profile of
graph-mode decode steps."""
import sys, time, cProfile, pstats, torch, triton
import importlib
pda = importlib.import_module("kernels.paged_decode_attention")
from kernels.utils import TileConfig
B, ctx, hk, g, d, bs = 512, 384, 8, 4, 128, 16
nb = B * (ctx // bs + 1)
cache = torch.randn(2, nb, bs, hk, d, device="cuda", dtype=torch.bfloat16)
tables = torch.randperm(nb, device="cuda", dtype=torch.int32)[:B * (ctx // bs + 1)].view(B, -1)
lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
q = torch.randn(B, hk * g, d, device="cuda", dtype=torch.bfloat16)
orig = pda.decode_tile_config
for bn, w, st in [(64, 4, 3), (32, 4, 3), (128, 4, 3), (64, 8, 3), (128, 8, 3), (64, 4, 4), (32, 2, 3), (64, 2, 3)]:
    pda.decode_tile_config = lambda *a, bn=bn, w=w, st=st: TileConfig(16, bn, w, st)
    ms = triton.testing.do_bench(lambda: pda.paged_decode_attention(q, cache, tables, lens, 0.088, num_splits=1), return_mode="median")
    print(f"BLOCK_N={bn} warps={w} stages={st}: {ms*1e3:.1f} us  {2*B*ctx*hk*d*2/ms/1e9:.2f} TB/s")
pda.decode_tile_config = orig
from runner.engine import LLM, SamplingParams
from runner.engine_bench import model_folder, random_prompts
llm = LLM(model_folder("llama3_8b"), load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
          max_num_seqs=256, max_num_batched_tokens=16384)
eng = llm.llm_engine
sp = SamplingParams(temperature=1.0, max_tokens=400, ignore_eos=True, detokenize=False)
for i, p in enumerate(random_prompts(256, 256, 32000, 0)):
    eng.add_request(str(i), p, sp)
for _ in range(12):
    eng.step()
torch.cuda.synchronize()
pr = cProfile.Profile(); pr.enable()
t = time.perf_counter()
for _ in range(20):
    eng.step()
el = time.perf_counter() - t
pr.disable()
print("graph decode step ms", el / 20 * 1e3, eng.model_runner.num_graph_steps)
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
