"""Quantized linear layers: which method a model runs, read as vLLM reads it.

    LLM(quantization=...) + config.json's quantization_config (or compression_config)
      -> resolve_quantization (at config time): the method name, or None
         - None: the checkpoint's quant_method, if it has one (as vLLM does)
         - a name: must agree with the checkpoint's quant_method when there is one;
           'fp8' on an unquantized checkpoint quantizes its weights at load (online)
      -> get_quant_config (at load time): the method's QuantizationConfig, from the
         quantization_config dict, or for awq / gptq from quant_config.json /
         quantize_config.json in the model folder (older checkpoints keep it there)
      -> model_loader builds the model with it; every linear layer asks it for its method

    fp8                 fp8.py                dynamic (online) or fp8 checkpoints
    compressed-tensors  compressed_tensors.py fp8 W8A8 checkpoints from llm-compressor
    awq                 awq.py                AutoAWQ GEMM int4
    gptq                gptq.py               AutoGPTQ / GPTQModel int4, act order included

A .gguf model is dequantized when it is converted at load (runner/engine/gguf_loader.py), so
it runs unquantized: quantization=None or 'gguf' (vLLM's name for it) both mean that.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

from runner.engine.quantization.base import QuantizationConfig

logger = logging.getLogger("runner.engine")

QUANTIZATION_METHODS = ("awq", "compressed-tensors", "fp8", "gptq")
# vLLM's kernel-specific names for the same checkpoint formats
ALIASES = {"awq_marlin": "awq", "auto_awq": "awq", "gptq_marlin": "gptq", "auto_gptq": "gptq"}
# older AWQ / GPTQ checkpoints keep their settings beside config.json
CONFIG_FILENAMES = {"awq": ("quant_config.json", "quantize_config.json"),
                    "gptq": ("quantize_config.json",)}


def checkpoint_quant_config(hf_config) -> Optional[dict]:
    """config.json's quantization_config (compressed-tensors: compression_config) with its
    quant_method lower-cased and normalized, or None."""
    cfg = getattr(hf_config, "quantization_config", None)
    if cfg is None:
        cfg = getattr(hf_config, "compression_config", None)
    if cfg is None:
        return None
    cfg = dict(cfg) if isinstance(cfg, dict) else dict(cfg.to_dict())
    method = str(cfg.get("quant_method", "")).lower().replace("compressed_tensors",
                                                                "compressed-tensors")
    cfg["quant_method"] = method
    return cfg


def _supported() -> str:
    return ", ".join(QUANTIZATION_METHODS)


def resolve_quantization(quantization: Optional[str], hf_config, is_gguf: bool = False
                         ) -> Optional[str]:
    """The method the engine runs: None (unquantized) or one of QUANTIZATION_METHODS."""
    if quantization is not None and not isinstance(quantization, str):
        raise ValueError(f"quantization must be a string or None, got {quantization!r}.")
    if is_gguf:
        if quantization not in (None, "gguf"):
            raise ValueError(
                f"quantization={quantization!r} does not apply to a .gguf model: its weights "
                "are dequantized when the file is converted at load. Use quantization=None.")
        return None
    if quantization == "gguf":
        raise ValueError("quantization='gguf' needs model to be a .gguf file.")
    user = ALIASES.get(quantization, quantization)
    if user is not None and user not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization={quantization!r} is not supported; supported: "
                         f"{_supported()} (or None).")
    cfg = checkpoint_quant_config(hf_config)
    method = (cfg or {}).get("quant_method") or None
    if method is not None and method not in QUANTIZATION_METHODS:
        raise NotImplementedError(
            f"the checkpoint's quantization_config has quant_method={method!r}, which is not "
            f"supported; supported: {_supported()}.")
    if method is None:
        if user == "compressed-tensors":
            raise ValueError("quantization='compressed-tensors' needs a checkpoint whose "
                             "config.json has a compressed-tensors quantization_config.")
        return user
    if user is not None and user != method:
        raise ValueError(
            f"Quantization method specified in the model config ({method}) does not match "
            f"the quantization method specified in the `quantization` argument ({quantization}).")
    if quantization in ALIASES:
        logger.info("quantization=%r: the %s checkpoint runs on this engine's %s kernels",
                    quantization, method, method)
    return method


def _config_dict(model_config) -> Optional[dict]:
    cfg = checkpoint_quant_config(model_config.hf_config)
    if cfg is not None:
        return cfg
    names = CONFIG_FILENAMES.get(model_config.quantization, ())
    found = [n for n in names if os.path.isfile(os.path.join(model_config.model_path, n))]
    if not found:
        return None
    with open(os.path.join(model_config.model_path, found[0])) as fh:
        return json.load(fh)


def get_quant_config(model_config) -> Optional[QuantizationConfig]:
    """The QuantizationConfig of model_config.quantization (None: unquantized)."""
    method = getattr(model_config, "quantization", None)
    if method is None:
        return None
    cfg = _config_dict(model_config)
    if method == "fp8":
        from runner.engine.quantization.fp8 import Fp8Config
        return Fp8Config.from_config(cfg) if cfg is not None else Fp8Config()
    if method == "compressed-tensors":
        from runner.engine.quantization.compressed_tensors import CompressedTensorsConfig
        return CompressedTensorsConfig.from_config(cfg)
    if cfg is None:
        names = " / ".join(CONFIG_FILENAMES[method])
        raise ValueError(
            f"quantization={method!r} needs the checkpoint's quantization settings: a "
            f"quantization_config in config.json or {names} in {model_config.model_path!r}; "
            "found neither (is this an unquantized checkpoint? quantization='fp8' quantizes "
            "one at load).")
    if method == "awq":
        from runner.engine.quantization.awq import AWQConfig
        return AWQConfig.from_config(cfg)
    from runner.engine.quantization.gptq import GPTQConfig
    return GPTQConfig.from_config(cfg)
