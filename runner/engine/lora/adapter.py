"""A PEFT LoRA adapter folder -> LoRAAdapter: its A/B matrices per target module, checked
against the base model, in host memory.

    adapter_config.json          peft_type LORA, r, lora_alpha, target_modules, use_rslora, ...
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight [r, in]
      (or adapter_model.bin)     base_model.model.<module>.lora_B.weight [out, r]

`<module>` is the HF module name (model.layers.3.self_attn.q_proj). The engine's fused layers
take several of them: q/k/v_proj are the parts of qkv_proj, gate/up_proj those of
gate_up_proj; `LoRATarget` (built by the manager from the model) says which fused layer and
which part each name is, and its shapes. The scaling is PEFT's: lora_alpha / r, or
lora_alpha / sqrt(r) with use_rslora; it is folded into B when the adapter is put in a slot
(runner/engine/lora/layers.py).

Every problem names the folder and the fix: no folder, no adapter_config.json, no weights, a
peft_type other than LORA, a rank above max_lora_rank, a target module this model has no
LoRA layer for, a tensor whose shape does not fit the base layer, PEFT options this engine
does not implement (DoRA, bias training, modules_to_save, rank/alpha patterns).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class LoRATarget:
    """A HF module name the model can take an adapter for."""
    layer: str            # the engine module that holds it (model.layers.3.self_attn.qkv_proj)
    part: int             # its part of a fused layer (0 for a plain one)
    in_features: int
    out_features: int


@dataclass
class LoRAAdapter:
    lora_int_id: int
    lora_name: str
    path: str
    rank: int
    scaling: float
    # engine layer -> per part (A [r, in], B [out, r]) or None where the adapter has no weights
    weights: dict[str, list[Optional[tuple[torch.Tensor, torch.Tensor]]]] = field(
        default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for parts in self.weights.values()
                   for p in parts if p is not None for t in p)


def _fail(path: str, what: str) -> ValueError:
    return ValueError(f"LoRA adapter {path!r}: {what}")


def _read_config(path: str) -> dict:
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isdir(path):
        raise _fail(path, "no such folder; lora_path must be a PEFT adapter folder "
                          f"({CONFIG_NAME} + {WEIGHT_NAMES[0]}).")
    if not os.path.isfile(cfg_path):
        raise _fail(path, f"{CONFIG_NAME} is missing; save the adapter with PEFT's "
                          "save_pretrained (it writes adapter_config.json beside the weights).")
    try:
        with open(cfg_path) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        raise _fail(path, f"cannot read {CONFIG_NAME}: {exc}") from None
    if not isinstance(cfg, dict):
        raise _fail(path, f"{CONFIG_NAME} is not a JSON object.")
    return cfg


def _check_options(path: str, cfg: dict) -> None:
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _fail(path, f"peft_type {cfg.get('peft_type')!r} is not a LoRA adapter; only "
                          "peft_type LORA is supported.")
    unsupported = {
        "use_dora": cfg.get("use_dora") is True,
        "bias": cfg.get("bias", "none") not in (None, "none"),
        "modules_to_save": bool(cfg.get("modules_to_save")),
        "rank_pattern": bool(cfg.get("rank_pattern")),
        "alpha_pattern": bool(cfg.get("alpha_pattern")),
        "fan_in_fan_out": cfg.get("fan_in_fan_out") is True,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise NotImplementedError(
            f"LoRA adapter {path!r}: adapter_config.json sets {bad} "
            f"({', '.join(f'{k}={cfg.get(k)!r}' for k in bad)}), which this engine does not "
            "support; merge the adapter into the model instead, or retrain it without them.")


def _rank_and_scaling(path: str, cfg: dict, max_lora_rank: int) -> tuple[int, float]:
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise _fail(path, f"adapter_config.json r={r!r} is not a positive integer rank.")
    if r > max_lora_rank:
        raise _fail(path, f"rank r={r} is above max_lora_rank={max_lora_rank}; raise "
                          f"max_lora_rank (LLM(..., enable_lora=True, max_lora_rank="
                          f"{next_rank(r)})).")
    alpha = cfg.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise _fail(path, f"adapter_config.json lora_alpha={alpha!r} is not a number.")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return r, float(scaling)


def next_rank(r: int) -> int:
    from runner.engine.lora.config import MAX_LORA_RANKS
    return next((x for x in MAX_LORA_RANKS if x >= r), MAX_LORA_RANKS[-1])


def _check_target_modules(path: str, cfg: dict, targets: dict[str, LoRATarget]) -> None:
    """A listed target module this model has no LoRA layer for is an error (a regex string
    is matched against the tensors instead)."""
    names = cfg.get("target_modules")
    if not isinstance(names, (list, tuple)):
        return
    known = {n.rsplit(".", 1)[-1] for n in targets}
    unknown = sorted(str(n) for n in names if str(n).rsplit(".", 1)[-1] not in known)
    if unknown:
        raise _fail(path, f"target module(s) {unknown} have no LoRA layer in this model; the "
                          f"supported target modules are {sorted(known)}. Retrain the adapter "
                          "on those, or merge it into the model.")


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_NAMES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                return load_file(file)
            return torch.load(file, map_location="cpu", weights_only=True)
    raise _fail(path, f"no adapter weights ({' or '.join(WEIGHT_NAMES)}); save the adapter with "
                      "PEFT's save_pretrained.")


def load_adapter(lora_int_id: int, lora_name: str, path: str, max_lora_rank: int,
                 targets: dict[str, LoRATarget]) -> LoRAAdapter:
    """Read and check one PEFT adapter folder against the model's LoRA targets."""
    path = os.path.expanduser(path)
    cfg = _read_config(path)
    _check_options(path, cfg)
    rank, scaling = _rank_and_scaling(path, cfg, max_lora_rank)
    _check_target_modules(path, cfg, targets)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _load_tensors(path).items():
        m = _KEY.match(key)
        if m is None:
            raise _fail(path, f"tensor {key!r} is not a LoRA A/B weight (expected "
                              "'base_model.model.<module>.lora_A.weight' / 'lora_B'); "
                              "embeddings, biases and extra modules are not supported.")
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not pairs:
        raise _fail(path, "its weights file holds no LoRA tensors.")
    adapter = LoRAAdapter(lora_int_id, lora_name, path, rank, scaling)
    for module, ab in sorted(pairs.items()):
        target = targets.get(module)
        if target is None:
            supported = sorted({n.rsplit(".", 1)[-1] for n in targets})
            raise _fail(path, f"module {module!r} has no LoRA layer in this model (supported "
                              f"target modules: {supported}).")
        if set(ab) != {"A", "B"}:
            raise _fail(path, f"module {module!r} has lora_{''.join(ab)} but not both A and B.")
        a, b = ab["A"], ab["B"]
        want_a, want_b = (rank, target.in_features), (target.out_features, rank)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise _fail(path, f"module {module!r}: lora_A {tuple(a.shape)} / lora_B "
                              f"{tuple(b.shape)} do not fit the base layer (want {want_a} / "
                              f"{want_b} for r={rank}); is it an adapter of this base model?")
        parts = adapter.weights.setdefault(target.layer, [None] * _num_parts(targets,
                                                                             target.layer))
        parts[target.part] = (a, b)
    return adapter


def _num_parts(targets: dict[str, LoRATarget], layer: str) -> int:
    return 1 + max(t.part for t in targets.values() if t.layer == layer)
