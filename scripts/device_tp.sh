#!/bin/bash
# Tensor-parallel checks and benchmarks on the device tool's multi-GPU machines:
#   bash scripts/device_tp.sh tests   (nvidia-h200-x2) multi-GPU tests (NCCL, Triton, CUDA graphs)
#                                      + the single-GPU path tests, after the worker refactor
#   bash scripts/device_tp.sh bench   (nvidia-h200-x2) Llama-2-13B shape: throughput and batch-1
#                                      latency, tp=1 then tp=2
#   bash scripts/device_tp.sh tp4     (nvidia-h200-x4) Llama-2-70B shape throughput with tp=4
#   bash scripts/device_tp.sh ar      (nvidia-h200-x2) all-reduce latency NCCL vs custom, the
#                                      multi-GPU tests, 13B batch-1 latency tp=2 with and without
#                                      the custom all-reduce and tp=1, 13B throughput tp=2
#   bash scripts/device_tp.sh prof    (nvidia-h200-x2) multi-GPU tests, then where a 13B batch-1
#                                      decode step's time goes (tp=1, tp=2 NCCL, tp=2 custom)
#   bash scripts/device_tp.sh final   (nvidia-h200-x2) multi-GPU + CUDA-graph tests, 13B batch-1
#                                      latency at tp=2 and tp=1
#   bash scripts/device_tp.sh all     multi-GPU tests, then 13B tp=2 (and, with 4 GPUs, the 70B
#                                      tp=4 run), then the 13B tp=1 baselines on GPU 0
# Each benchmark's JSON record goes to $OUT/<name>.log (also outputs/bench/... as usual).
source "$(dirname "$0")/device_env.sh"
if [ "$1" = tests ]; then
  timeout 280 python3 -m pytest -q -p no:cacheprovider -m multi_gpu --timeout 120 \
      tests/engine/test_tensor_parallel.py 2>&1 | tee "$OUT/tests_tp.log" | tail -30
  timeout 250 python3 -m pytest -q -x -p no:cacheprovider -m "gpu or not gpu" \
      tests/engine/test_gpu_path.py tests/engine/test_triton_backend.py 2>&1 \
      | tee "$OUT/tests_gpu.log" | tail -15
elif [ "$1" = bench ]; then
  for tp in 1 2; do
    timeout 170 $B --model llama2_13b $THR_512_128 --tensor-parallel-size $tp > "$OUT/thr13_tp$tp.log" 2>&1
    echo "== throughput tp=$tp"; show "$OUT/thr13_tp$tp.log"
  done
  for tp in 1 2; do
    timeout 100 $B --model llama2_13b $LAT --tensor-parallel-size $tp > "$OUT/lat13_tp$tp.log" 2>&1
    echo "== latency tp=$tp"; show "$OUT/lat13_tp$tp.log"
  done
elif [ "$1" = all ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m multi_gpu --timeout 60 \
      tests/engine/test_tensor_parallel.py 2>&1 | tee "$OUT/tests_tp.log" | tail -8
  timeout 110 $B --model llama2_13b $THR_512_128 --tensor-parallel-size 2 > "$OUT/thr13_tp2.log" 2>&1
  echo "== 13B throughput tp=2"; show "$OUT/thr13_tp2.log"
  timeout 70 $B --model llama2_13b $LAT --tensor-parallel-size 2 > "$OUT/lat13_tp2.log" 2>&1
  echo "== 13B latency tp=2"; show "$OUT/lat13_tp2.log"
  if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then
    timeout 200 $B --model llama2_70b $THR_512_128 --tensor-parallel-size 4 > "$OUT/thr70_tp4.log" 2>&1
    echo "== 70B throughput tp=4"; show "$OUT/thr70_tp4.log"
  fi
  export CUDA_VISIBLE_DEVICES=0
  timeout 60 $B --model llama2_13b $LAT > "$OUT/lat13_tp1.log" 2>&1
  echo "== 13B latency tp=1"; show "$OUT/lat13_tp1.log"
  timeout 120 $B --model llama2_13b $THR_512_128 > "$OUT/thr13_tp1.log" 2>&1
  echo "== 13B throughput tp=1"; show "$OUT/thr13_tp1.log"
elif [ "$1" = ar ]; then
  timeout 150 python3 scripts/bench_all_reduce.py --world-size 2 > "$OUT/allreduce.log" 2>&1
  echo "== all-reduce"; tail -3 "$OUT/allreduce.log"
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m multi_gpu --timeout 90 \
      tests/engine/test_custom_all_reduce.py tests/engine/test_tensor_parallel.py 2>&1 \
      | tee "$OUT/tests_tp.log" | tail -8
  timeout 80 $B --model llama2_13b $LAT --tensor-parallel-size 2 > "$OUT/lat13_tp2.log" 2>&1
  echo "== 13B latency tp=2 (custom all-reduce)"; show "$OUT/lat13_tp2.log"
  timeout 80 $B --model llama2_13b $LAT --tensor-parallel-size 2 --disable-custom-all-reduce \
      > "$OUT/lat13_tp2_nccl.log" 2>&1
  echo "== 13B latency tp=2 (NCCL only)"; show "$OUT/lat13_tp2_nccl.log"
  timeout 110 $B --model llama2_13b $THR_512_128 --tensor-parallel-size 2 > "$OUT/thr13_tp2.log" 2>&1
  echo "== 13B throughput tp=2"; show "$OUT/thr13_tp2.log"
  CUDA_VISIBLE_DEVICES=0 timeout 60 $B --model llama2_13b $LAT > "$OUT/lat13_tp1.log" 2>&1
  echo "== 13B latency tp=1"; show "$OUT/lat13_tp1.log"
elif [ "$1" = prof ]; then
  timeout 250 python3 -m pytest -q -x -p no:cacheprovider -m multi_gpu --timeout 100 \
      tests/engine/test_custom_all_reduce.py tests/engine/test_tensor_parallel.py 2>&1 \
      | tee "$OUT/tests_tp.log" | tail -25
  timeout 250 python3 scripts/profile_tp_decode.py llama2_13b > "$OUT/profile.log" 2>&1
  grep -E "^measured|Error" "$OUT/profile.log" | head -5
elif [ "$1" = final ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m "multi_gpu or gpu" --timeout 90 \
      tests/engine/test_custom_all_reduce.py tests/engine/test_tensor_parallel.py \
      tests/engine/test_gpu_path.py::test_cuda_graphs_give_the_eager_tokens 2>&1 \
      | tee "$OUT/tests_tp.log" | tail -15
  timeout 80 $B --model llama2_13b $LAT --tensor-parallel-size 2 > "$OUT/lat13_tp2.log" 2>&1
  echo "== 13B latency tp=2"; show "$OUT/lat13_tp2.log"
  CUDA_VISIBLE_DEVICES=0 timeout 60 $B --model llama2_13b $LAT > "$OUT/lat13_tp1.log" 2>&1
  echo "== 13B latency tp=1"; show "$OUT/lat13_tp1.log"
elif [ "$1" = tp4 ]; then
  timeout 400 $B --model llama2_70b $THR_512_128 --tensor-parallel-size 4 > "$OUT/thr70_tp4.log" 2>&1
  echo "== 70B throughput tp=4"; show "$OUT/thr70_tp4.log"
  tail -5 "$OUT/thr70_tp4.log"
fi
