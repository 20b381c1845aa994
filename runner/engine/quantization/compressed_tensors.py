"""compressed-tensors checkpoints (llm-compressor) whose linear layers are fp8: read their
quantization_config as vLLM reads it, and hand the layers to the fp8 method (fp8.py).

    quantization_config (config.json) = {
      "quant_method": "compressed-tensors", "format": "float-quantized" | "naive-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"] or ["re:..."],
          "weights": {"num_bits": 8, "type": "float", "strategy": "channel" | "tensor", ...},
          "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                "dynamic": true} | {"strategy": "tensor", "dynamic": false}}},
      "ignore": ["lm_head", "re:..."], "kv_cache_scheme": null}

    tensors per layer: weight [N, K] e4m3, weight_scale [N, 1] (channel) or [1] (tensor),
    input_scale [1] (static activations only)

The supported schemes are fp8 W8A8: per-channel or per-tensor weight scales with per-token
dynamic or per-tensor static activation scales. Anything else (int8, 4-bit packed, weight-only
fp8, block scales, sparsity, a KV-cache scheme) raises NotImplementedError naming what the
checkpoint asks for.
"""
from __future__ import annotations

import re
from typing import Optional

from runner.engine.quantization.base import is_layer_skipped, layer_names
from runner.engine.quantization.fp8 import Fp8Config, Fp8LinearMethod

FORMATS = ("float-quantized", "naive-quantized")


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"compressed-tensors checkpoint with {what} is not supported; supported: fp8 W8A8 "
        "(8-bit float weights with channel or tensor scales, per-token dynamic or per-tensor "
        "static activations), format float-quantized or naive-quantized")


def _scheme(group_name: str, group: dict) -> str:
    """A config group -> its activation scheme ('dynamic' or 'static'), checking the rest."""
    w = group.get("weights") or {}
    if (w.get("num_bits"), w.get("type")) != (8, "float"):
        raise _unsupported(f"{group_name} weights num_bits={w.get('num_bits')} "
                           f"type={w.get('type')!r}")
    if w.get("strategy") not in ("channel", "tensor"):
        raise _unsupported(f"{group_name} weights strategy={w.get('strategy')!r}")
    if w.get("dynamic") or w.get("symmetric") is False:
        raise _unsupported(f"{group_name} dynamic or asymmetric weights")
    a = group.get("input_activations")
    if not a:
        raise _unsupported(f"{group_name} weight-only fp8 (no input_activations)")
    if (a.get("num_bits"), a.get("type")) != (8, "float"):
        raise _unsupported(f"{group_name} input_activations num_bits={a.get('num_bits')} "
                           f"type={a.get('type')!r}")
    if a.get("strategy") == "token" and a.get("dynamic"):
        return "dynamic"
    if a.get("strategy") == "tensor" and not a.get("dynamic"):
        return "static"
    raise _unsupported(f"{group_name} input_activations strategy={a.get('strategy')!r} "
                       f"dynamic={a.get('dynamic')!r}")


class CompressedTensorsConfig(Fp8Config):
    name = "compressed-tensors"

    def __init__(self, activation_scheme: str, targets: list[str], ignore: list[str]):
        super().__init__(serialized=True, activation_scheme=activation_scheme,
                         ignored_layers=ignore, source="compressed-tensors")
        self.targets = targets

    @classmethod
    def from_config(cls, cfg: dict) -> "CompressedTensorsConfig":
        fmt = cfg.get("format")
        if fmt not in FORMATS:
            raise _unsupported(f"format={fmt!r}")
        if cfg.get("kv_cache_scheme"):
            raise _unsupported(f"kv_cache_scheme={cfg['kv_cache_scheme']!r}")
        if cfg.get("sparsity_config"):
            raise _unsupported("a sparsity_config")
        groups = cfg.get("config_groups") or {}
        if not groups:
            raise _unsupported("no config_groups")
        schemes = {_scheme(name, g) for name, g in groups.items()}
        if len(schemes) > 1:
            raise _unsupported("groups that mix dynamic and static activations")
        targets = [t for g in groups.values() for t in g.get("targets", [])]
        return cls(schemes.pop(), targets, list(cfg.get("ignore") or []))

    def _targeted(self, prefix: str) -> bool:
        if "Linear" in self.targets:
            return True
        names = layer_names(prefix, self.packed_modules_mapping)
        hits = [any(t.startswith("re:") and re.match(t[3:], n) for t in self.targets)
                or n in self.targets for n in names]
        if any(hits) and not all(hits):
            raise ValueError(f"some but not all parts of the fused layer {prefix!r} are "
                             "compressed-tensors targets; one matmul needs one precision.")
        return all(hits)

    def get_linear_method(self, prefix: str, layer) -> Optional[Fp8LinearMethod]:
        if not self._targeted(prefix) or is_layer_skipped(prefix, self.ignored_layers,
                                                          self.packed_modules_mapping):
            return None
        return Fp8LinearMethod(self)
