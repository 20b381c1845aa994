#!/usr/bin/env bash
# On the GPU machine: GPU tests, then the throughput workloads of the GPU issue (dummy weights of
# the real shapes, bf16). Results: outputs/bench/*/benchmark.json (or $OUT/bench on the device).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
OUT=${OUT:-outputs}
python3 -m pytest tests/engine/test_gpu_path.py -q -m gpu -p no:cacheprovider 2>&1 | tail -6
summ() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); e=r['engine']; print(r['model'], 'tok/s', round(e['total_tokens_per_s']), 'req/s', round(e['requests_per_s'],2), 'roofline frac', round(e.get('fraction_of_measured_matmul_roofline',0),3), 'vs HF', round(r.get('speedup_vs_hf',0),1), 'preempt', e['num_preemptions'], 'blocks', e['num_gpu_blocks'], 'peak', round(e['peak_memory_fraction'],3))" "$1"; }
python3 -m runner.engine_bench --model llama3_8b --workload throughput --num-prompts 1000 \
  --input-len 256 --output-len 256 --hf-num-prompts 256 --hf-batch-size 128 \
  --max-num-seqs "${SEQS:-256}" --out "$OUT/bench" > "$OUT/tp8b.log" 2>&1
tail -3 "$OUT/tp8b.log"; summ "$(ls -t $OUT/bench/llama3_8b-throughput/*/benchmark.json | head -1)"
python3 -m runner.engine_bench --model llama2_13b --workload throughput --num-prompts 500 \
  --input-len 512 --output-len 128 --max-num-seqs "${SEQS:-256}" --out "$OUT/bench" > "$OUT/tp13b.log" 2>&1
tail -3 "$OUT/tp13b.log"; summ "$(ls -t $OUT/bench/llama2_13b-throughput/*/benchmark.json | head -1)"
mkdir -p "$OUT/json"; for f in $OUT/bench/*/*/benchmark.json; do cp "$f" "$OUT/json/$(basename $(dirname $(dirname $f)))-$(basename $(dirname $f)).json"; done
