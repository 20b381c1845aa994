#!/bin/bash
# One device lease, three back-to-back calls on nvidia-h200, each carrying one chunk of real vLLM
# 0.24 (../shared/peers/README.md; three chunks of 62.5 MB, the zstandard wheel in c1) and doing real work:
#   call 1  carry .peers/c1           bash scripts/device_session.sh tests
#             the GPU tests of the kernels and of the engine's quantization, prefix caching,
#             GPU path and swap
#   call 2  carry .peers/c2           bash scripts/device_session.sh ours
#             our prefix workload (2000 x 1024 shared + 256 own, 64 out), prefix caching on and
#             off (scripts/device_prefix.sh prefix), then Llama-3-8B 1000 x 256/256
#   call 3  carry .peers/c3           bash scripts/device_session.sh peer
#             vLLM's prefix workload with and without its prefix caching
#   any     bash scripts/device_session.sh lora
#             8B throughput, base vs 4 LoRA adapters of rank 16 in mixed batches; beam width 4
# (the mc workload compares with our own uncached run: scripts/device_prefix.sh mc, any lease)
# Logs land in $OUT (the device tool brings them back); docs/benchmarks.md quotes them.
source "$(dirname "$0")/device_env.sh"
export VLLM_CHUNKS=3
bash .peers/stage_vllm.sh
PEER="env PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 python3 .peers/vllm_peer.py"
case "${1:-}" in
  tests)
    timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels 2>&1 \
        | tee "$OUT/gpu_kernels.log" | tail -8
    timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_quantization.py \
        tests/engine/test_prefix_caching.py tests/engine/test_gpu_path.py tests/engine/test_swap.py \
        tests/engine/test_lora_layers.py \
        2>&1 | tee "$OUT/gpu_engine.log" | tail -15
    ;;
  ours)
    bash scripts/device_prefix.sh prefix
    run thr_8b 110 --model llama3_8b $THR_256_256
    ;;
  peer)
    timeout 150 $PEER prefix --model llama3_8b --num-prompts 2000 --prefix-len 1024 \
        --input-len 256 --output-len 64 2>&1 | grep -E "^PEER|Error" | tee "$OUT/peer_prefix_on.log"
    timeout 170 $PEER prefix --model llama3_8b --num-prompts 2000 --prefix-len 1024 \
        --input-len 256 --output-len 64 --no-prefix-caching 2>&1 | grep -E "^PEER|Error" \
        | tee "$OUT/peer_prefix_off.log"
    ;;
  lora)
    # issue 22: mixed batches of 4 rank-16 adapters against the base model (target >= 0.80),
    # and issue 19's beam search (target >= 10x vLLM's 1.05 req/s)
    run thr_8b_base 150 --model llama3_8b $THR_256_256
    run thr_8b_lora4 200 --model llama3_8b $THR_256_256 --lora-adapters 4 --lora-rank 16
    run beam_8b 170 --model llama3_8b --workload beam --beam-width 4 --num-prompts 100 \
        --input-len 256 --output-len 256
    ;;
  *) echo "usage: $0 tests|ours|peer|lora"; exit 2 ;;
esac
