#!/bin/bash
# Triton GEMV on the device tool (nvidia-h100-x1): the GEMV micro-benchmark and tile sweep,
# the GPU tests it touches, then Llama-3-8B batch-1 latency with the GEMV (the default) and
# without it (GEMV_MAX_M = 0: cuBLAS for every linear), in the same call.
#   bash scripts/device_gemv.sh [bench|lat|all]
source "$(dirname "$0")/device_env.sh"
mode=${1:-all}
if [ "$mode" != lat ]; then
  timeout 240 python3 scripts/bench_gemv.py --csv "$OUT/bench_gemv.csv" 2>&1 \
      | tee "$OUT/bench_gemv.log" | grep -v "^\s*$" | tail -60
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py \
      tests/engine/test_gpu_path.py 2>&1 | tee "$OUT/tests_gemv.log" | tail -4
fi
if [ "$mode" != bench ]; then
  # engine_bench with every linear on cuBLAS
  NO_GEMV="import sys, runner.engine.layers.linear as L; L.GEMV_MAX_M = 0
import runner.engine_bench as b; b.main(sys.argv[1:])"
  run lat8_gemv 90 --model llama3_8b $LAT
  timeout 90 python3 -c "$NO_GEMV" --out outputs/bench --model llama3_8b $LAT \
      > "$OUT/lat8_cublas.log" 2>&1
  echo "== lat8_cublas (rc $?)"; show "$OUT/lat8_cublas.log"
  run lat8_gemv2 90 --model llama3_8b $LAT
fi
