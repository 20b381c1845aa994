"""Host (Python) time of engine_bench's evaluation workloads, on the CPU with a tiny model.

    python3 scripts/profile_host.py MODEL_DIR mc --num-prompts 200 [--stub] [--reps 3]
    python3 scripts/profile_host.py MODEL_DIR prefix --num-prompts 1000 --stub [--cprofile F]

MODEL_DIR: a tiny model folder (tests/tiny_models.py make_tiny_model, with
max_position_embeddings >= 2048). Runs engine_bench's run_mc / run_prefix (same prompts,
warm-up and prefix-cache reset; prefix: --prefix-len 1024 --input-len 256 --output-len 64
--max-num-seqs 512 --max-num-batched-tokens 8192) and prints, for the timed generate only:
its wall and CPU time, the model forward's time, host = CPU time - forward, the garbage
collector's time per generation and the engine's step phases. --stub replaces the forward
pass by an embedding lookup, so only host work is left (the sampler's and prompt-logprob
tensor work stays: on a GPU that is device time). Report the minimum over --reps runs: the
figures are only comparable on one machine, and shared machines are noisy.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import time

from runner import engine_bench as eb
from runner import engine_bench_eval as eb_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("workload", choices=["mc", "prefix"])
    ap.add_argument("--num-prompts", type=int, default=200, help="(mc: items)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stub", action="store_true", help="forward pass = embedding lookup")
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--cprofile", default=None, help="write the last run's cProfile here")
    a = ap.parse_args()
    argv = ["--model", a.model, "--dtype", "float32", "--workload", a.workload,
            "--num-prompts", str(a.num_prompts)]
    if a.no_prefix_caching:
        argv.append("--no-prefix-caching")
    if a.workload == "prefix":
        argv += ["--prefix-len", "1024", "--input-len", "256", "--output-len", "64",
                 "--max-num-seqs", "512", "--max-num-batched-tokens", "8192"]
    args = eb.parse_args(argv)
    llm = eb.build_llm(a.model, args, True)
    engine = llm.llm_engine
    runner = engine.executor.model_runner
    vocab = engine.model_config.hf_config.vocab_size
    if a.stub:
        inner = next(m for m in runner.model.modules() if hasattr(m, "embed_tokens"))
        runner.model.forward = lambda input_ids, positions, kv_caches, meta: \
            inner.embed_tokens(input_ids)                                    # [T, H]

    gc_time = {0: 0.0, 1: 0.0, 2: 0.0}
    started = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_time[info["generation"]] += time.perf_counter() - started[0]
    gc.callbacks.append(on_gc)

    rec: dict = {}
    timed_generate = eb_eval._timed_generate

    def measured(llm, prompts, sp):
        for g in gc_time:
            gc_time[g] = 0.0
        fwd, phases = runner.times["forward_s"], dict(engine.step_times)
        prof = rec.get("profile")
        cpu = time.process_time()
        if prof is not None:
            prof.enable()
        result = timed_generate(llm, prompts, sp)
        if prof is not None:
            prof.disable()
        rec["cpu"] = time.process_time() - cpu
        rec["forward"] = runner.times["forward_s"] - fwd
        rec["phases"] = {k: round(engine.step_times[k] - v, 2) for k, v in phases.items()}
        return result
    eb_eval._timed_generate = measured

    hosts = []
    for r in range(a.reps):
        if a.cprofile and r == a.reps - 1:
            rec["profile"] = cProfile.Profile()
        if a.workload == "mc":
            out = eb_eval.run_mc(llm, a.num_prompts, 512, 16, 4, vocab, 0)
        else:
            out = eb_eval.run_prefix(llm, 1024, 256, 64, a.num_prompts, vocab, 0)
        host = rec["cpu"] - rec["forward"]
        hosts.append(host)
        print(f"run {r}: wall {out['elapsed_s']:.2f} s, cpu {rec['cpu']:.2f} s, forward "
              f"{rec['forward']:.2f} s, host {host:.2f} s, gc by generation "
              f"{ {g: round(t, 2) for g, t in gc_time.items()} }, phases {rec['phases']}, "
              f"prefix-cache hit rate {out['prefix_cache_hit_rate']:.3f}", flush=True)
    if a.cprofile:
        rec["profile"].dump_stats(a.cprofile)
    print(f"host time, min of {a.reps}: {min(hosts):.2f} s")
    engine.shutdown()


if __name__ == "__main__":
    main()
