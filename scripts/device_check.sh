#!/usr/bin/env bash
# On the GPU machine: GPU tests, then the batch-1 latency workload (CUDA graphs vs eager).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-outputs}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -m pytest tests/engine/test_gpu_path.py tests/engine/test_triton_backend.py -q -m "gpu or not gpu" -x -p no:cacheprovider 2>&1 | tail -15
python3 -m runner.engine_bench --model llama3_8b --workload latency --batch-size 1 \
  --input-len 32 --output-len 128 --compare-eager --warmup 2 --iters 5 --out "$OUT/bench" 2>&1 | tail -60
