#!/bin/bash
# Token budget and batch width on the two throughput targets (nvidia-h100-x1), fp8 cache.
# `13b` and `8b` ran before the fix for in-run Triton compiles, which their first run of each
# call paid (docs/benchmarks.md); `ab` is the clean comparison of budgets 8192 and 16384.
#   bash scripts/device_sched.sh 13b | 8b | ab
source "$(dirname "$0")/device_env.sh"
T13="--model llama2_13b --workload throughput --num-prompts 500 --input-len 512 --output-len 128 --kv-cache-dtype fp8"
T8="--model llama3_8b --workload throughput --num-prompts 1000 --input-len 256 --output-len 256 --kv-cache-dtype fp8"
case "$1" in
  13b)
    run s13_192_16k 150 $T13 --max-num-seqs 192 --max-num-batched-tokens 16384
    run s13_192_4k  150 $T13 --max-num-seqs 192 --max-num-batched-tokens 4096
    run s13_192_8k  150 $T13 --max-num-seqs 192 --max-num-batched-tokens 8192
    run s13_160_4k  150 $T13 --max-num-seqs 160 --max-num-batched-tokens 4096 ;;
  8b)
    run s8_512_16k  150 $T8 --max-num-seqs 512 --max-num-batched-tokens 16384
    run s8_512_8k   150 $T8 --max-num-seqs 512 --max-num-batched-tokens 8192
    run s8_1024_16k 150 $T8 --max-num-seqs 1024 --max-num-batched-tokens 16384
    run s8_768_8k   150 $T8 --max-num-seqs 768 --max-num-batched-tokens 8192 ;;
  ab)   # one call, the default budget first (after the fix for in-run compiles)
    run ab13_8k  200 $T13 --max-num-seqs 192 --max-num-batched-tokens 8192
    run ab13_16k 200 $T13 --max-num-seqs 192 --max-num-batched-tokens 16384
    run ab8_8k   200 $T8 --max-num-seqs 512 --max-num-batched-tokens 8192
    run ab8_16k  200 $T8 --max-num-seqs 512 --max-num-batched-tokens 16384 ;;
esac
