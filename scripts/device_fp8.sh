#!/bin/bash
# fp8 KV cache on the device tool (nvidia-h100-x1; `h200` on nvidia-h200): the fp8 kernel and
# engine GPU tests, then Llama-2-13B 500 x 512/128 throughput with the bf16 cache and with
# kv_cache_dtype=fp8, in the same call. Logs go to $OUT/<name>.log.
#   bash scripts/device_fp8.sh h100 | h200
source "$(dirname "$0")/device_env.sh"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -k "fp8" \
    tests/kernels/test_reshape_and_cache.py tests/kernels/test_paged_decode_attention.py \
    tests/kernels/test_prefill_attention.py tests/engine/test_gpu_path.py 2>&1 \
    | tee "$OUT/tests_fp8.log" | tail -8
run thr13_fp8 150 --model llama2_13b $THR_512_128 --kv-cache-dtype fp8
run thr13_auto 150 --model llama2_13b $THR_512_128
