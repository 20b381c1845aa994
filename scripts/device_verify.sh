#!/usr/bin/env bash
# On the GPU machine: GPU tests, then the 13B workload to check peak memory against the budget.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-outputs}
python3 -m pytest tests/engine/test_gpu_path.py -q -m gpu -p no:cacheprovider 2>&1 | tail -3
python3 -m runner.engine_bench --out $OUT/bench --model llama2_13b --workload throughput --num-prompts 500 \
   --input-len 512 --output-len 128 --max-num-seqs 128 --max-num-batched-tokens 16384 > $OUT/c.log 2>&1
mkdir -p $OUT/json; cp $OUT/bench/*/*/benchmark.json $OUT/json/ 2>/dev/null
python3 -c "
import json,glob; r=json.load(open(glob.glob('$OUT/json/benchmark.json')[0])); e=r['engine']
print({k: e[k] for k in ('total_tokens_per_s','fraction_of_measured_matmul_roofline','peak_memory_fraction','num_gpu_blocks','num_preemptions')})"
