#!/bin/bash
# One device lease on nvidia-h200: three back-to-back calls, each carrying one chunk of real
# vLLM 0.24 (../shared/peers/README.md; the zstandard wheel rides in c1) and doing real work,
# and one call with the Ray wheels (scripts/device_ray.sh). Each call stays under ~8 minutes.
#   call 1  carry .peers/c1   bash scripts/device_session.sh a
#             GPU tests of the quantized and LoRA engine paths (CUDA graphs with mixed
#             adapters); 8B throughput 1000 x 256/256 bf16 (the base of the LoRA and fp8
#             ratios) and with 4 rank-16 adapters in mixed batches; beam width 4
#   call 2  carry .peers/c2   bash scripts/device_session.sh b
#             our prefix workload (2000 x 1024 shared + 256 own, 64 out), caching on and off;
#             fp8 weights 1000 x 256/256; batch 1 32/128 bf16 and AWQ
#   call 3  carry .peers/c3   bash scripts/device_session.sh c
#             vLLM's prefix workload with and without its prefix caching; vLLM fp8 throughput
#   call 4  carry .whl        bash scripts/device_session.sh d
#             beam, 8B and 13B throughput again, then the Ray driver's overhead
#             (scripts/device_ray.sh)
# Logs land in $OUT (the device tool brings them back); docs/benchmarks.md quotes them.
source "$(dirname "$0")/device_env.sh"
export VLLM_CHUNKS=3
bash .peers/stage_vllm.sh
PEER="env PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 python3 .peers/vllm_peer.py"
PREFIX="--workload prefix --num-prompts 2000 --prefix-len 1024 --input-len 256 --output-len 64 --max-num-seqs 512 --max-num-batched-tokens 8192"
PEER_PREFIX="prefix --model llama3_8b --num-prompts 2000 --prefix-len 1024 --input-len 256 --output-len 64"
case "${1:-}" in
  a)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_quantization.py \
        tests/engine/test_lora_layers.py 2>&1 | tee "$OUT/gpu_engine.log" | tail -12
    run thr_8b_base 120 --model llama3_8b $THR_256_256
    run thr_8b_lora4 150 --model llama3_8b $THR_256_256 --lora-adapters 4 --lora-rank 16
    run beam_8b 100 --model llama3_8b --workload beam --beam-width 4 --num-prompts 100 \
        --input-len 256 --output-len 256
    ;;
  b)
    run prefix_on 100 --model llama3_8b $PREFIX
    run prefix_off 135 --model llama3_8b $PREFIX --no-prefix-caching
    run thr_fp8 110 --model llama3_8b $THR_256_256 --quantization fp8
    run lat_bf16 70 --model llama3_8b $LAT
    run lat_awq 70 --model llama3_8b $LAT --quantization awq --dtype float16
    ;;
  c)
    timeout 150 $PEER $PEER_PREFIX 2>&1 | grep -E "^PEER|Error" | tee "$OUT/peer_prefix_on.log"
    timeout 170 $PEER $PEER_PREFIX --no-prefix-caching 2>&1 | grep -E "^PEER|Error" \
        | tee "$OUT/peer_prefix_off.log"
    PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 timeout 140 python3 scripts/peer_quant.py \
        throughput --quantization fp8 2>&1 | grep -E "^PEER|Error" | tee "$OUT/peer_thr_fp8.log"
    ;;
  d)
    # after the beam and collector changes: beam, the 8B and 13B no-regression rows, then the
    # Ray driver's overhead (carry .whl; local, ray, and a replica given 8 CPUs)
    run beam_8b 100 --model llama3_8b --workload beam --beam-width 4 --num-prompts 100 \
        --input-len 256 --output-len 256
    run thr_8b 90 --model llama3_8b $THR_256_256
    run thr_13b 110 --model llama2_13b $THR_512_128
    run thr_13b_fp8kv 110 --model llama2_13b $THR_512_128 --kv-cache-dtype fp8 --max-num-seqs 384
    CPUS=1 bash scripts/device_ray.sh
    ;;
  *) echo "usage: $0 a|b|c|d"; exit 2 ;;
esac
