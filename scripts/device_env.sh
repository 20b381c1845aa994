# Sourced by the scripts/device_*.sh runners: environment, the output folder, the benchmark
# command, the standard workloads, `show` (the key lines of a benchmark log) and `run` (one
# benchmark into $OUT/<name>.log).
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-outputs/device}
mkdir -p "$OUT"
nvidia-smi -L
B="python3 -m runner.engine_bench --out outputs/bench"
LAT="--workload latency --batch-size 1 --input-len 32 --output-len 128"
THR_256_256="--workload throughput --num-prompts 1000 --input-len 256 --output-len 256 --max-num-seqs 512 --max-num-batched-tokens 16384"
THR_512_128="--workload throughput --num-prompts 500 --input-len 512 --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 16384"
show() { grep -E '"(kv_cache_dtype|kv_cache_token_capacity|async_scheduling|num_async_steps|custom_all_reduce|total_tokens_per_s|output_tokens_per_s|median_latency_s|cuda_graphs_speedup|num_gpu_blocks|num_preemptions|fraction_of_measured_matmul_roofline|fraction_of_weight_read_roofline)"|custom all-reduce|Error|error' "$1" | head -16; }
run() {  # name timeout args...
  local name=$1 t=$2; shift 2
  timeout "$t" $B "$@" > "$OUT/$name.log" 2>&1
  echo "== $name (rc $?)"; show "$OUT/$name.log"
}
