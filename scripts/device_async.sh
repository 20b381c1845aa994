#!/bin/bash
# Async scheduling on the device tool: the GPU tests, then each workload with async scheduling
# on (the default) and off (--no-async-scheduling), in the same call.
#   bash scripts/device_async.sh h100   (nvidia-h100-x1) GPU-path tests; Llama-3-8B batch-1
#                                       latency and 1000 x 256/256 throughput, on and off
#   bash scripts/device_async.sh h100b  (nvidia-h100-x1) Llama-2-13B 500 x 512/128 throughput,
#                                       on and off
#   bash scripts/device_async.sh x2     (nvidia-h200-x2) multi-GPU tests; Llama-2-13B batch-1
#                                       latency tp=1 and tp=2, on and off; 13B throughput tp=2
# Each benchmark's log goes to $OUT/<name>.log (benchmark.json under outputs/bench as usual).
source "$(dirname "$0")/device_env.sh"
if [ "$1" = h100 ]; then
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/engine/test_gpu_path.py \
      2>&1 | tee "$OUT/tests_gpu.log" | tail -8
  run lat8_on 80 --model llama3_8b $LAT --compare-eager
  run lat8_off 60 --model llama3_8b $LAT --no-async-scheduling
  run thr8_on 110 --model llama3_8b $THR_256_256
  run thr8_off 110 --model llama3_8b $THR_256_256 --no-async-scheduling
elif [ "$1" = h100b ]; then
  run thr13_on 120 --model llama2_13b $THR_512_128
  run thr13_off 120 --model llama2_13b $THR_512_128 --no-async-scheduling
elif [ "$1" = x2 ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m multi_gpu --timeout 90 \
      tests/engine/test_custom_all_reduce.py tests/engine/test_tensor_parallel.py 2>&1 \
      | tee "$OUT/tests_tp.log" | tail -8
  run lat13_tp2_on 80 --model llama2_13b $LAT --tensor-parallel-size 2
  run lat13_tp2_off 80 --model llama2_13b $LAT --tensor-parallel-size 2 --no-async-scheduling
  CUDA_VISIBLE_DEVICES=0 run lat13_tp1_on 60 --model llama2_13b $LAT
  CUDA_VISIBLE_DEVICES=0 run lat13_tp1_off 60 --model llama2_13b $LAT --no-async-scheduling
  run thr13_tp2_on 110 --model llama2_13b $THR_512_128 --tensor-parallel-size 2
fi
