"""Engine benchmarks with LoRA adapters (runner.engine_bench --lora-adapters N --lora-rank R):
random PEFT adapters of a model shape, written to a folder, and one per prompt, round robin.

    write_random_adapters(hf_config, n, rank, folder, seed) -> [adapter folder]
    lora_requests(folders, num_prompts) -> [LoRARequest]   prompt i gets adapter i % n

An adapter targets every attention and MLP projection (q, k, v, o, gate, up, down) of every
layer, in PEFT's file layout (adapter_config.json + adapter_model.safetensors, keys
base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_A/B.weight), so the engine reads
it as it reads a real one; the weights are small random values in the model's dtype (the
benchmark measures the work, not the outputs).
"""
from __future__ import annotations

import json
import os

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shapes(hf_config) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target projection."""
    h = hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or h // hf_config.num_attention_heads
    q = hf_config.num_attention_heads * head_dim
    kv = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    kv *= head_dim
    i = hf_config.intermediate_size
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_random_adapters(hf_config, n: int, rank: int, folder: str, seed: int = 0,
                          dtype: torch.dtype = torch.bfloat16) -> list[str]:
    from safetensors.torch import save_file

    shapes = _shapes(hf_config)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for k in range(n):
        path = os.path.join(folder, f"adapter{k}")
        os.makedirs(path, exist_ok=True)
        tensors = {}
        for layer in range(hf_config.num_hidden_layers):
            for name in TARGETS:
                part = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                fan_in, fan_out = shapes[name]
                key = f"base_model.model.model.layers.{layer}.{part}.{name}"
                tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=gen)
                                                   * fan_in ** -0.5).to(dtype)
                tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=gen)
                                                   * 0.01).to(dtype)
        save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
                  "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
                  "target_modules": list(TARGETS), "use_rslora": False,
                  "fan_in_fan_out": False, "inference_mode": True}
        with open(os.path.join(path, "adapter_config.json"), "w") as fh:
            json.dump(config, fh)
        paths.append(path)
    return paths


def lora_requests(folders: list[str], num_prompts: int) -> list:
    from runner.engine.lora.request import LoRARequest

    adapters = [LoRARequest(f"adapter{k}", k + 1, path) for k, path in enumerate(folders)]
    return [adapters[i % len(adapters)] for i in range(num_prompts)]
