"""Where a batch-1 decode step's time goes with tensor parallelism (driver's view): wall time per
step, the CPU self time of the top operations (the CUDA graph launch among them), and the
GPU's busy time, for tp=1, tp=2 with NCCL and tp=2 with the custom all-reduce.

    python3 scripts/profile_tp_decode.py llama2_13b            # all three
    python3 scripts/profile_tp_decode.py llama3_8b tp1         # named variants only
"""
import gc
import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from runner.engine import LLM, SamplingParams
from runner.engine_bench import model_folder, random_prompts


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "llama2_13b"
    variants = [("tp1", 1, False), ("tp2_nccl", 2, True), ("tp2_custom", 2, False)]
    if len(sys.argv) > 2:
        variants = [v for v in variants if v[0] in sys.argv[2:]]
    report = {}
    for name, tp, no_custom in variants:
        llm = LLM(model_folder(model), load_format="dummy", dtype="bfloat16",
                  skip_tokenizer_init=True,
                  max_num_seqs=4, max_num_batched_tokens=4096, tensor_parallel_size=tp,
                  disable_custom_all_reduce=no_custom)
        eng = llm.llm_engine
        # the benchmarks' sampling (engine_bench): temperature 1, so the sampler's kernels count
        sp = SamplingParams(temperature=1.0, max_tokens=400, ignore_eos=True, detokenize=False)
        eng.add_request("0", random_prompts(1, 32, 32000, 0)[0], sp)
        for _ in range(40):
            eng.step()
        torch.cuda.synchronize()
        steps = 50
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                eng.step()
            torch.cuda.synchronize()
        ka = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in ka if e.device_type.name == "CUDA") / 20
        cpu_top = sorted(((e.key, round(e.self_cpu_time_total / 20, 1)) for e in ka),
                         key=lambda kv: -kv[1])[:12]
        gpu_top = sorted(((e.key[:60], round(e.self_device_time_total / 20, 1), e.count // 20)
                          for e in ka if e.self_device_time_total > 0),
                         key=lambda kv: -kv[1])[:24]
        report[name] = {"wall_ms_per_step": wall * 1e3, "gpu_busy_ms_per_step": gpu_us / 1e3,
                        "cpu_self_us_per_step_top": cpu_top,
                        "gpu_us_per_step_top": gpu_top,
                        "custom_all_reduce": eng.get_stats()["custom_all_reduce"]}
        print(name, json.dumps(report[name], indent=1), flush=True)
        eng.shutdown()
        del llm, eng
        gc.collect()
        torch.cuda.empty_cache()
    print("measured:", json.dumps(report))


if __name__ == "__main__":      # TP workers are spawned: they import this module
    main()
