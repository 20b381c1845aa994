"""Test helpers: tiny PEFT LoRA adapter folders written by hand (adapter_config.json +
adapter_model.safetensors of random A/B), and the reference: HF transformers with the adapter
merged by PEFT (merge_and_unload), greedy on the CPU in float32."""
from __future__ import annotations

import json
import os

import torch

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def module_shapes(config) -> dict[str, tuple[int, int]]:
    """HF module leaf name -> (in_features, out_features) of a Llama-shaped config."""
    h, i = config.hidden_size, config.intermediate_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_adapter(folder, base_path: str, target_modules, r: int, lora_alpha: float,
                  seed: int, use_rslora: bool = False, std: float = 0.15,
                  config_extra: dict | None = None, layers=None) -> str:
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_path)
    shapes = module_shapes(config)
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in (range(config.num_hidden_layers) if layers is None else layers):
        for name in target_modules:
            part = "self_attn" if name in ATTN else "mlp"
            fan_in, fan_out = shapes[name]
            key = f"base_model.model.model.layers.{layer}.{part}.{name}"
            tensors[f"{key}.lora_A.weight"] = std * torch.randn(r, fan_in, generator=gen)
            tensors[f"{key}.lora_B.weight"] = std * torch.randn(fan_out, r, generator=gen)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path,
           "r": r, "lora_alpha": lora_alpha, "lora_dropout": 0.0, "bias": "none",
           "target_modules": list(target_modules), "use_rslora": use_rslora,
           "fan_in_fan_out": False, "inference_mode": True, **(config_extra or {})}
    with open(os.path.join(folder, "adapter_config.json"), "w") as fh:
        json.dump(cfg, fh)
    return os.fspath(folder)


def peft_merged_greedy(base_path: str, adapter: str | None, prompts: list[str],
                       max_new: int) -> list[list[int]]:
    """HF generate with the adapter merged into the weights by PEFT (None: the base model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    model.generation_config.eos_token_id = None
    tok = AutoTokenizer.from_pretrained(base_path)
    outs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            outs.append(out[0, ids.shape[1]:].tolist())
    return outs


def peft_saved_adapter(folder, base_path: str, target_modules, r: int, lora_alpha: float,
                       seed: int) -> str:
    """An adapter folder written by PEFT itself (get_peft_model + save_pretrained), with its
    zero-initialized B made random so that it changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha,
                                                  target_modules=list(target_modules),
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(folder)
    return os.fspath(folder)


def merged_model_folder(folder, base_path: str, adapter: str) -> str:
    """The base model with the adapter merged by PEFT, saved as a plain model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)
    return os.fspath(folder)
