#!/bin/bash
# Issue 18 on the device tool (nvidia-h200, one call of under 10 minutes): the engine core on
# vLLM v1's owners, automatic prefix caching and swap preemption.
#   bash scripts/device_prefix.sh          the GPU tests touched, then the evaluation workloads
#                                          on dummy Llama-3-8B weights (bf16), each with prefix
#                                          caching on (the default) and off:
#     prefix  2000 prompts of a shared 1024-token prefix + 256 own tokens, 64 out (the
#             workload of ../shared/peers/vllm_peer.py prefix, same prompts and engine limits:
#             max_num_seqs 512, max_num_batched_tokens 8192)
#     mc      1000 items of a 512-token context and 4 choices of 16 tokens, prompt_logprobs=1,
#             max_tokens 1 (lm-eval's loglikelihood requests)
#   bash scripts/device_prefix.sh tests    the tests only        } the two halves, for two calls
#   bash scripts/device_prefix.sh bench    the benchmarks only   } if one call's limit is tight
#   bash scripts/device_prefix.sh prefix|mc   one of the two workloads (on and off)
# (the per-command timeouts add up to about ten minutes; expected: ~2 min tests, ~6 min bench)
# Each benchmark's log goes to $OUT/<name>.log (benchmark.json under outputs/bench as usual);
# `show` prints the figures and the prefix-cache counters (queries / hits, in tokens).
# vLLM's side of the prefix workload, in the same lease (see ../shared/peers/README.md):
#   python3 .peers/vllm_peer.py prefix --model llama3_8b --num-prompts 2000 --prefix-len 1024 \
#       --input-len 256 --output-len 64 [--no-prefix-caching]
source "$(dirname "$0")/device_env.sh"
mode=${1:-all}
show_prefix() {
  grep -E '"(total_tokens_per_s|requests_per_s|items_per_s|elapsed_s|prefix_cache_queries|prefix_cache_hits|prefix_cache_hit_rate|computed_prompt_tokens|enable_prefix_caching|num_preemptions|cuda_graph_steps|num_gpu_blocks)"|Error|error' "$1" | head -14
}
runp() {  # name timeout args...
  local name=$1 t=$2; shift 2
  timeout "$t" $B "$@" > "$OUT/$name.log" 2>&1
  echo "== $name (rc $?)"; show_prefix "$OUT/$name.log"
}
PREFIX="--workload prefix --num-prompts 2000 --prefix-len 1024 --input-len 256 --output-len 64 --max-num-seqs 512 --max-num-batched-tokens 8192"
MC="--workload mc --num-prompts 1000 --context-len 512 --choice-len 16 --num-choices 4 --max-num-seqs 512 --max-num-batched-tokens 8192"

if [ "$mode" = all ] || [ "$mode" = tests ]; then
  # the GPU tests of the files touched: prefix caching and swap on Triton + CUDA graphs (+ fp8),
  # and the GPU path (graphs, memory profiling) through the restructured step
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_prefix_caching.py \
      tests/engine/test_swap.py tests/engine/test_gpu_path.py 2>&1 | tee "$OUT/tests_gpu.log" | tail -10
  # the step's own tests and the Triton backend's, on the GPU machine (the engine picks CUDA
  # and Triton where a test does not name the device)
  timeout 40 python3 -m pytest -q -p no:cacheprovider tests/engine/test_scheduler.py \
      tests/engine/test_triton_backend.py 2>&1 | tee "$OUT/tests_cpu_on_gpu.log" | tail -6
fi
if [ "$mode" = all ] || [ "$mode" = bench ] || [ "$mode" = prefix ]; then
  runp prefix_on 100 --model llama3_8b $PREFIX
  runp prefix_off 135 --model llama3_8b $PREFIX --no-prefix-caching
fi
if [ "$mode" = all ] || [ "$mode" = bench ] || [ "$mode" = mc ]; then
  runp mc_on 70 --model llama3_8b $MC
  runp mc_off 115 --model llama3_8b $MC --no-prefix-caching
fi
