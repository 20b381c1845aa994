#!/bin/bash
# The model-family refactor on the device tool: one decoder for Llama / Mistral / Qwen2 / Qwen3
# and the kernels' *_ref twins as the engine's torch path.
#   bash scripts/device_models.sh tests   (nvidia-h200) the GPU tests of the kernels and layers
#                                          touched, every family's fast paths (Triton, GEMV,
#                                          piecewise CUDA graphs, fp8 KV) against HF, the GPU path
#   bash scripts/device_models.sh bench   (nvidia-h200) batch-1 latency (GEMV + graphs) and a
#                                          short throughput run per family shape, dummy weights,
#                                          bf16; Qwen3-8B also with the fp8 KV cache
#   bash scripts/device_models.sh tp      (nvidia-h200-x2) tensor parallelism on NCCL with
#                                          Triton and CUDA graphs for llama_gqa, qwen2, qwen3
# tests and bench each fit one 10-minute call; run them as two calls on one warm nvidia-h200.
# Shapes other than llama3_8b are config.json-only folders written below (engine_bench takes a
# folder as --model; load_format=dummy fills the weights).
source "$(dirname "$0")/device_env.sh"
mode=${1:-tests}

shape() {  # name json: a folder with only config.json
  local dir=/tmp/runner-shape-$1
  mkdir -p "$dir"
  echo "$2" > "$dir/config.json"
  echo "$dir"
}
COMMON='"hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2'
QWEN3_8B=$(shape qwen3_8b "{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", $COMMON,
  \"hidden_size\": 4096, \"intermediate_size\": 12288, \"num_hidden_layers\": 36,
  \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"head_dim\": 128,
  \"vocab_size\": 151936, \"max_position_embeddings\": 40960, \"rope_theta\": 1000000.0,
  \"rms_norm_eps\": 1e-6, \"attention_bias\": false, \"use_sliding_window\": false}")
QWEN2_7B=$(shape qwen2_7b "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", $COMMON,
  \"hidden_size\": 3584, \"intermediate_size\": 18944, \"num_hidden_layers\": 28,
  \"num_attention_heads\": 28, \"num_key_value_heads\": 4, \"vocab_size\": 152064,
  \"max_position_embeddings\": 32768, \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6,
  \"use_sliding_window\": false}")
MISTRAL_7B=$(shape mistral_7b "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", $COMMON,
  \"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32,
  \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"vocab_size\": 32000,
  \"max_position_embeddings\": 32768, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5,
  \"sliding_window\": 4096}")
THR="--workload throughput --num-prompts 200 --input-len 256 --output-len 128 --max-num-seqs 256 --max-num-batched-tokens 16384"

if [ "$mode" = tests ]; then
  # every Llama relative on Triton + GEMV + piecewise CUDA graphs (+ fp8 KV) against HF
  timeout 220 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_model_families.py \
      2>&1 | tee "$OUT/tests_families.log" | tail -12
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu \
      tests/kernels/test_reshape_and_cache.py tests/kernels/test_paged_decode_attention.py \
      tests/kernels/test_prefill_attention.py tests/kernels/test_rms_norm.py \
      tests/kernels/test_rotary_embedding.py tests/kernels/test_silu_and_mul.py \
      tests/kernels/test_gemv.py 2>&1 | tee "$OUT/tests_kernels.log" | tail -12
  timeout 160 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_gpu_path.py \
      2>&1 | tee "$OUT/tests_gpu_path.log" | tail -8
  # CPU tests of the files touched, on the GPU machine (the engine picks CUDA and Triton)
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_engine_torch_path.py \
      tests/engine/test_triton_backend.py 2>&1 | tee "$OUT/tests_cpu_on_gpu.log" | tail -6
fi
if [ "$mode" = bench ]; then
  for m in llama3_8b "$QWEN3_8B" "$QWEN2_7B" "$MISTRAL_7B"; do
    name=$(basename "$m" | sed 's/runner-shape-//')
    run "lat_$name" 65 --model "$m" $LAT
    run "thr_$name" 65 --model "$m" $THR
  done
  run lat_qwen3_8b_fp8 65 --model "$QWEN3_8B" $LAT --kv-cache-dtype fp8
fi
if [ "$mode" = tp ]; then
  timeout 400 python3 -m pytest -q -p no:cacheprovider -m multi_gpu --timeout 150 \
      tests/engine/test_tensor_parallel.py 2>&1 | tee "$OUT/tests_tp.log" | tail -20
  run lat_qwen3_8b_tp2 120 --model "$QWEN3_8B" $LAT --tensor-parallel-size 2
fi
