#!/bin/bash
# Issue 21 on the device tool (nvidia-h200): quantized weights (fp8, AWQ, GPTQ) and
# cpu_offload_gb. Llama-3-8B shape, dummy weights (valid fp8 / packed int4 tensors).
#   bash scripts/device_quant.sh        (all) the GPU tests, the benchmarks, the fp8 agreement in
#                                       one 10-minute call (estimated, never measured: about 9.5
#                                       minutes). Each step's timeout is cut to what is left of
#                                       ALL_S seconds; a cut step shows rc 124: rerun its mode
#   bash scripts/device_quant.sh tests  the gpu-marked tests of the quantization kernels, layers
#                                       and engine paths, offloading included, and the GEMV
#                                       layers' (the linear layers were refactored)
#   bash scripts/device_quant.sh bench  fp8 vs bf16 throughput 1000 x 256/256; AWQ batch-1
#                                       32/128 vs bf16 batch-1; cpu_offload_gb=8 batch-1 (32/32)
#                                       and a 200 x 256/256 throughput; ratios in ratios.json
#   bash scripts/device_quant.sh extra  GPTQ batch-1; the families' GPU tests (unquantized
#                                       layers through the new linear layers)
#   bash scripts/device_quant.sh agree  greedy agreement of fp8 with bf16 on a briefly trained
#                                       small model (scripts/fp8_agreement.py)
#   bash scripts/device_quant.sh peer   vLLM 0.24 on the same fp8 throughput and AWQ batch-1
#                                       workloads; needs /tmp/site staged in this lease
#                                       (../shared/peers/README.md: three calls with the chunks)
# Results: $OUT/*.log (outputs/device by default) and outputs/bench/*/benchmark.json.
source "$(dirname "$0")/device_env.sh"
mode=${1:-all}
ALL_S=${ALL_S:-585}
START=$SECONDS
left() {  # a step's timeout: its own limit, or what is left of ALL_S
  local want=$1 rest=$((ALL_S - (SECONDS - START)))
  [ "$rest" -lt 5 ] && rest=5
  [ "$want" -lt "$rest" ] && echo "$want" || echo "$rest"
}
qrun() {  # name timeout args...: one engine_bench run within the budget
  local name=$1 t; t=$(left "$2"); shift 2
  run "$name" "$t" "$@"
}
show() { grep -E '"(quantization|cpu_offloaded_bytes|total_tokens_per_s|output_tokens_per_s|median_latency_s|fraction_of_weight_read_roofline|kv_cache_token_capacity)"|Error|error' "$1" | head -14; }
THR="$THR_256_256"
LAT_SHORT="--workload latency --batch-size 1 --input-len 32 --output-len 32 --warmup 1 --iters 2"
OFF_THR="--workload throughput --num-prompts 200 --input-len 256 --output-len 256 --max-num-seqs 256 --max-num-batched-tokens 16384"

bench() {
  qrun thr_bf16 110 --model llama3_8b $THR
  qrun thr_fp8 110 --model llama3_8b $THR --quantization fp8
  qrun lat_bf16 70 --model llama3_8b $LAT
  qrun lat_awq 70 --model llama3_8b $LAT --quantization awq --dtype float16
  qrun lat_offload8 90 --model llama3_8b $LAT_SHORT --cpu-offload-gb 8
  qrun thr_offload8 150 --model llama3_8b $OFF_THR --cpu-offload-gb 8
  python3 - "$OUT" <<'EOF'
import json, re, sys, pathlib
out = pathlib.Path(sys.argv[1])
def measured(name, key):
    p = out / f"{name}.log"
    if not p.exists():
        return None
    m = [json.loads(l.split("measured: ", 1)[1]) for l in p.read_text().splitlines()
         if l.startswith("measured: ")]
    return m[-1].get(key) if m else None
r = {"fp8_over_bf16_throughput": (measured("thr_fp8", "total_tokens_per_s") or 0)
     / (measured("thr_bf16", "total_tokens_per_s") or float("inf")),
     "awq_over_bf16_batch1": (measured("lat_awq", "output_tokens_per_s") or 0)
     / (measured("lat_bf16", "output_tokens_per_s") or float("inf")),
     "offload8_batch1_output_tok_s": measured("lat_offload8", "output_tokens_per_s"),
     "offload8_throughput_total_tok_s": measured("thr_offload8", "total_tokens_per_s")}
print("RATIOS " + json.dumps(r))
(out / "ratios.json").write_text(json.dumps(r, indent=2))
EOF
}

tests() {
  timeout "$(left 200)" python3 -m pytest -q -p no:cacheprovider -m gpu \
      tests/kernels/test_fp8_quant.py tests/kernels/test_fp8_gemm.py \
      tests/kernels/test_int4_gemm.py tests/kernels/test_int4_gemv.py \
      2>&1 | tee "$OUT/tests_kernels.log" | tail -8
  timeout "$(left 200)" python3 -m pytest -q -p no:cacheprovider -m gpu \
      tests/engine/test_quantization.py tests/engine/test_quantization_offload.py \
      tests/kernels/test_gemv.py 2>&1 | tee "$OUT/tests_engine.log" | tail -8
}

extra() {
  qrun lat_gptq 70 --model llama3_8b $LAT --quantization gptq --dtype float16
  timeout "$(left 300)" python3 -m pytest -q -p no:cacheprovider -m gpu \
      tests/engine/test_model_families.py 2>&1 | tee "$OUT/tests_families.log" | tail -8
}

agree() {
  timeout "$(left 150)" python3 scripts/fp8_agreement.py --steps 400 \
      --out "$OUT/fp8_agreement.json" 2>&1 | tee "$OUT/fp8_agreement.log" | tail -10
}

peer() {
  [ -d /tmp/site/vllm ] || { echo "vLLM is not staged in /tmp/site (../shared/peers/README.md)"; return 1; }
  for w in "throughput --quantization fp8" "throughput" "latency --quantization awq --input-len 32 --output-len 128" \
           "latency --input-len 32 --output-len 128"; do
    name=peer_$(echo "$w" | tr ' ' '_' | tr -d '-' | cut -c1-40)
    PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 timeout "$(left 200)" \
        python3 scripts/peer_quant.py $w > "$OUT/$name.log" 2>&1
    echo "== $name (rc $?)"; grep -E '^PEER|Error' "$OUT/$name.log" | tail -3
  done
}

case "$mode" in
  all) tests; bench; agree ;;
  bench) bench ;;
  tests) tests ;;
  extra) extra ;;
  agree) agree ;;
  peer) peer ;;
  *) echo "usage: $0 [all|tests|bench|agree|extra|peer]"; exit 2 ;;
esac
