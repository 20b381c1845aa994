#!/bin/bash
# One device lease, three back-to-back calls on nvidia-h200, each carrying one chunk of real vLLM
# 0.24 (../shared/peers/README.md; VLLM_CHUNKS=4: c2 travels with c4) and doing real work:
#   call 1  carry .peers/c1           bash scripts/device_session.sh tests
#             the GPU tests of the engine and kernels (Triton, CUDA graphs, fp8, prefix caching,
#             swap, quantization) after the engine-core restructure
#   call 2  carry .peers/c2 .peers/c4 bash scripts/device_session.sh ours
#             our evaluation workloads, prefix caching on and off (scripts/device_prefix.sh bench):
#             prefix (2000 x 1024 shared + 256 own, 64 out) and mc (1000 x 512 + 4 x 16, prompt
#             logprobs)
#   call 3  carry .peers/c3           bash scripts/device_session.sh peer
#             vLLM's prefix workload with and without its prefix caching, then the regression
#             runs beside vLLM's throughput: Llama-3-8B 1000 x 256/256 and batch 1 32/128
# Logs land in $OUT (the device tool brings them back); docs/benchmarks.md quotes them.
source "$(dirname "$0")/device_env.sh"
export VLLM_CHUNKS=4
bash .peers/stage_vllm.sh
PEER="env PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 python3 .peers/vllm_peer.py"
case "${1:-}" in
  tests)
    timeout 330 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine 2>&1 \
        | tee "$OUT/gpu_engine.log" | tail -15
    timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels 2>&1 \
        | tee "$OUT/gpu_kernels.log" | tail -8
    ;;
  ours)
    bash scripts/device_prefix.sh bench
    ;;
  peer)
    timeout 150 $PEER prefix --model llama3_8b --num-prompts 2000 --prefix-len 1024 \
        --input-len 256 --output-len 64 2>&1 | grep -E "^PEER|Error" | tee "$OUT/peer_prefix_on.log"
    timeout 170 $PEER prefix --model llama3_8b --num-prompts 2000 --prefix-len 1024 \
        --input-len 256 --output-len 64 --no-prefix-caching 2>&1 | grep -E "^PEER|Error" \
        | tee "$OUT/peer_prefix_off.log"
    run thr_8b 110 --model llama3_8b $THR_256_256
    run lat_8b 60 --model llama3_8b $LAT
    timeout 120 $PEER throughput --model llama3_8b --num-prompts 1000 --input-len 256 \
        --output-len 256 2>&1 | grep -E "^PEER|Error" | tee "$OUT/peer_thr_8b.log"
    ;;
  *) echo "usage: $0 tests|ours|peer"; exit 2 ;;
esac
