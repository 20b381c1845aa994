#!/bin/bash
# Tensor-parallel checks and benchmarks on 2 GPUs (the device tool's nvidia-h200-x2):
#   bash scripts/device_tp.sh tests    multi-GPU tests (NCCL, Triton, CUDA graphs, failures)
#                                      + Llama-2-13B throughput, tp=1 then tp=2
#   bash scripts/device_tp.sh latency  Llama-2-13B batch-1 decode, tp=1 then tp=2
#                                      + Llama-2-70B shape throughput with tp=2
# Each benchmark's JSON record goes to $OUT/<name>.log (also outputs/bench/... as usual).
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/device}
mkdir -p "$OUT"
nvidia-smi -L
B="python3 -m runner.engine_bench --out outputs/bench"
THR13="--model llama2_13b --workload throughput --num-prompts 500 --input-len 512 --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 16384"
LAT13="--model llama2_13b --workload latency --batch-size 1 --input-len 32 --output-len 128"
if [ "$1" = tests ]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider -m multi_gpu \
      tests/engine/test_tensor_parallel.py 2>&1 | tee "$OUT/tests.log" | tail -30
  for tp in 1 2; do
    timeout 170 $B $THR13 --tensor-parallel-size $tp > "$OUT/thr13_tp$tp.log" 2>&1
    grep -E '"total_tokens_per_s"|num_preemptions|num_gpu_blocks|Error' "$OUT/thr13_tp$tp.log" | head -8
  done
elif [ "$1" = latency ]; then
  for tp in 1 2; do
    timeout 120 $B $LAT13 --tensor-parallel-size $tp > "$OUT/lat13_tp$tp.log" 2>&1
    grep -E '"median_latency_s"|output_tokens_per_s|Error' "$OUT/lat13_tp$tp.log" | head -5
  done
  timeout 300 $B --model llama2_70b --workload throughput --num-prompts 500 --input-len 512 \
      --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 16384 \
      --tensor-parallel-size 2 > "$OUT/thr70_tp2.log" 2>&1
  grep -E '"total_tokens_per_s"|num_preemptions|num_gpu_blocks|Error' "$OUT/thr70_tp2.log" | head -8
fi
