#!/bin/bash
# The fused sampler and the decode kernel's row-only mask on the device tool (nvidia-h100-x1):
#   bash scripts/device_sampler.sh check   GPU tests, sampler and decode-attention timings,
#                                          8B batch-1 latency (graphs vs eager)
#   bash scripts/device_sampler.sh bench   8B 1000 x 256/256 (HF side by side) and 13B
#                                          500 x 512/128 at the default token budget (8192)
source "$(dirname "$0")/device_env.sh"
case "$1" in
  check)
    timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_sampling.py \
        tests/kernels/test_paged_decode_attention.py tests/engine/test_gpu_path.py 2>&1 \
        | tee "$OUT/tests.log" | tail -6
    timeout 120 python3 scripts/bench_sampler.py 2>&1 | tee "$OUT/bench_sampler.log"
    timeout 120 python3 scripts/probe_decode_fp8.py --production 2>&1 | tee "$OUT/probe.log"
    run lat8 200 --model llama3_8b $LAT --compare-eager ;;
  bench)
    run thr8_fp8_hf 330 --model llama3_8b --workload throughput --num-prompts 1000 \
        --input-len 256 --output-len 256 --max-num-seqs 512 --max-num-batched-tokens 8192 \
        --kv-cache-dtype fp8 --hf-num-prompts 256 --hf-batch-size 128
    grep -E '"speedup_vs_hf"|hf_transformers' -A0 "$OUT/thr8_fp8_hf.log" | head -4
    run thr13_fp8 200 --model llama2_13b --workload throughput --num-prompts 500 \
        --input-len 512 --output-len 128 --max-num-seqs 192 --max-num-batched-tokens 8192 \
        --kv-cache-dtype fp8 ;;
esac
