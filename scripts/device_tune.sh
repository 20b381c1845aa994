#!/usr/bin/env bash
# On the GPU machine: throughput at larger batches with the per-phase time breakdown.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-outputs}
show() { python3 -c "
import json,sys; r=json.load(open(sys.argv[1])); e=r.get('engine') or r.get('cuda_graphs')
keys=['total_tokens_per_s','output_tokens_per_s','num_steps','num_preemptions','max_num_seqs','max_num_batched_tokens','schedule_s','prepare_s','forward_s','sample_s','process_s','cuda_graph_steps','fraction_of_measured_matmul_roofline','fraction_of_weight_read_roofline']
print(r['model'], r['workload'], {k: (round(e[k],3) if isinstance(e.get(k),float) else e.get(k)) for k in keys if k in e})" "$1"; }
run() { python3 -m runner.engine_bench "$@" --out "$OUT/bench" > "$OUT/last.log" 2>&1 || tail -20 "$OUT/last.log"; show "$(grep -o '/[^ ]*benchmark.json' $OUT/last.log | tail -1)"; }
run --model llama3_8b --workload throughput --num-prompts 1000 --input-len 256 --output-len 256 --max-num-seqs 512 --max-num-batched-tokens 16384
run --model llama3_8b --workload throughput --num-prompts 1000 --input-len 256 --output-len 256 --max-num-seqs 1024 --max-num-batched-tokens 16384
run --model llama2_13b --workload throughput --num-prompts 500 --input-len 512 --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 16384
run --model llama3_8b --workload latency --batch-size 1 --input-len 32 --output-len 128 --iters 3
