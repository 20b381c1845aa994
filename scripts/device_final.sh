#!/usr/bin/env bash
# On the GPU machine: every workload of the GPU issue, results copied to $OUT/json.
#   bash scripts/device_final.sh [a|b]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-outputs}
B="python3 -m runner.engine_bench --out $OUT/bench"
# `a`: the 8B throughput target with HF side by side and the 13B target (fp8 KV cache; max_num_seqs
# 192 on the H100, 384 on the H200); `b`: the batch-1 latency target and the 8B target with
# the bf16 cache. Both at the default token budget (8192). No argument: both.
if [ "${1:-ab}" != b ]; then
$B --model llama3_8b --workload throughput --num-prompts 1000 --input-len 256 --output-len 256 \
   --max-num-seqs 512 --max-num-batched-tokens 8192 --kv-cache-dtype fp8 \
   --hf-num-prompts 256 --hf-batch-size 128 > $OUT/a.log 2>&1
$B --model llama2_13b --workload throughput --num-prompts 500 --input-len 512 --output-len 128 \
   --max-num-seqs ${MAX_SEQS_13B:-192} --max-num-batched-tokens 8192 --kv-cache-dtype fp8 \
   > $OUT/c.log 2>&1
fi
if [ "${1:-ab}" != a ]; then
$B --model llama3_8b --workload latency --batch-size 1 --input-len 32 --output-len 128 --compare-eager > $OUT/b.log 2>&1
$B --model llama3_8b --workload throughput --num-prompts 1000 --input-len 256 --output-len 256 \
   --max-num-seqs 512 --max-num-batched-tokens 8192 > $OUT/d.log 2>&1
fi
mkdir -p $OUT/json
for f in $OUT/bench/*/*/benchmark.json; do cp "$f" "$OUT/json/$(basename $(dirname $(dirname $f))).json"; done
python3 - "$OUT/json" <<'PY'
import json, os, sys
for name in sorted(os.listdir(sys.argv[1])):
    r = json.load(open(os.path.join(sys.argv[1], name)))
    for key in ("engine", "cuda_graphs", "eager", "hf_transformers"):
        if key in r:
            e = r[key]
            print(name, key, {k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()
                              if k in ("total_tokens_per_s", "output_tokens_per_s", "requests_per_s",
                                       "median_latency_s", "fraction_of_measured_matmul_roofline",
                                       "fraction_of_weight_read_roofline", "num_preemptions",
                                       "peak_memory_fraction", "sample_s", "schedule_s")})
    for k in ("speedup_vs_hf", "cuda_graphs_speedup"):
        if k in r: print(name, k, round(r[k], 2))
PY
