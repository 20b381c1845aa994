"""Which Triton kernel variants compile inside a timed throughput run (device only).

Builds the engine as engine_bench does (Llama-3-8B shape, dummy weights), runs engine_bench's
warm-up, then the 1000 x 256/256 workload twice, and after each phase lists the kernel
variants (specialisation keys) compiled since the last one.

    PYTHONPATH=. python3 scripts/diag_compiles.py [--kv-cache-dtype fp8]
"""
import argparse
import importlib
import pkgutil
import time

from triton.runtime.jit import JITFunction

import kernels
from runner.engine import LLM
from runner.engine_bench import model_folder, random_prompts, run_throughput

ap = argparse.ArgumentParser()
ap.add_argument("--kv-cache-dtype", default="fp8")
args = ap.parse_args()


def jit_functions():
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction):
                yield f"{info.name}.{name}", obj


def variants() -> dict:
    out = {}
    for name, fn in jit_functions():
        for cache in fn.device_caches.values():
            for key in cache[0]:
                out[(name, str(key))] = True
    return out


def report(phase: str, before: dict) -> dict:
    now = variants()
    new = [k for k in now if k not in before]
    print(f"-- {phase}: {len(new)} new variants", flush=True)
    for name, key in new:
        print(f"   {name}: {key[:600]}", flush=True)
    return now


seen = report("import", {})
llm = LLM(model_folder("llama3_8b"), load_format="dummy", dtype="bfloat16",
          skip_tokenizer_init=True, max_num_seqs=512, max_num_batched_tokens=8192,
          kv_cache_dtype=args.kv_cache_dtype, gpu_memory_utilization=0.9)
seen = report("engine start (profile, graph capture)", seen)
prompts = random_prompts(1000, 256, 128000, 0)
run_throughput(llm, prompts[:64], 32)
seen = report("engine_bench warm-up (64 x 256/32)", seen)
for i in range(2):
    t = time.perf_counter()
    res = run_throughput(llm, prompts, 256)
    print(f"timed run {i}: {res['total_tokens_per_s']:,.0f} tokens/s "
          f"({time.perf_counter() - t:.2f} s)", flush=True)
    seen = report(f"timed run {i}", seen)
