"""quantization='fp8': e4m3 weights with one scale per output channel, activations quantized
per token (dynamic) or with a checkpoint's static scale, for every linear layer.

Two sources of weights, one layout after loading:

    a 16/32-bit checkpoint (online, `quantization='fp8'`): weight [N, K] loads in the model's
        dtype; process_weights_after_loading quantizes each output row with its own scale,
        scale[n] = max|w[n, :]| / 448
    an fp8 checkpoint (`quant_method: fp8` in config.json, or compressed-tensors float-quantized,
        see compressed_tensors.py): weight [N, K] e4m3 with weight_scale per tensor (one
        scalar per checkpoint part, q/k/v or gate/up each their own) or per channel ([N] or
        [N, 1]); a scalar fills its part's rows, so a fused layer keeps each part's scale
        without requantizing. Static activation scales (input_scale, one per part) become
        their maximum, as vLLM takes it.

    after loading: weight [N, K] float8_e4m3fn, weight_scale [N] fp32, input_scale [1] fp32 or
    absent (dynamic)

apply(x [T, K]): x -> (x_q e4m3 [T, K], scale [T, 1] or [1]) by kernels/fp8_quant.py, then
y = (x_q @ w_q^T) * scale * weight_scale (+ bias). On CUDA with the Triton backend the matmul is
torch._scaled_mm (CUTLASS, rowwise scales) when the card is Hopper or newer, the output bf16
and K, N multiples of 16; otherwise kernels/fp8_gemm.py. kernel_backend='torch' runs the
`*_ref` twins (dequantize, fp32 matmul) anywhere, CPU included.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from kernels.fp8_gemm import fp8_gemm, fp8_gemm_ref
from kernels.fp8_quant import (FP8_DTYPE, FP8_MAX, MIN_SCALE, scaled_fp8_quant,
                               scaled_fp8_quant_ref)
from runner.engine.quantization.base import (QuantizationConfig, is_layer_skipped, new_param,
                                             replace_param)

logger = logging.getLogger("runner.engine")

ACTIVATION_SCHEMES = ("dynamic", "static")


class Fp8Config(QuantizationConfig):
    name = "fp8"

    def __init__(self, serialized: bool = False, activation_scheme: str = "dynamic",
                 ignored_layers: Sequence[str] = (), ignore_substring: bool = False,
                 source: str = "fp8"):
        if activation_scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"fp8 activation_scheme {activation_scheme!r} is not supported; "
                             f"supported: {list(ACTIVATION_SCHEMES)}")
        if activation_scheme == "static" and not serialized:
            raise ValueError("fp8 activation_scheme='static' needs input scales from an fp8 "
                             "checkpoint; online quantization is dynamic")
        self.serialized = serialized
        self.activation_scheme = activation_scheme
        self.ignored_layers = list(ignored_layers)
        self.ignore_substring = ignore_substring
        self.source = source                 # 'fp8' or 'compressed-tensors', for messages

    @classmethod
    def from_config(cls, cfg: dict) -> "Fp8Config":
        """The quantization_config of an fp8 HF checkpoint, read as vLLM reads it."""
        if cfg.get("weight_block_size") is not None:
            raise NotImplementedError(
                f"fp8 checkpoints with weight_block_size={cfg['weight_block_size']} (block-wise "
                "scales) are not supported; per-tensor and per-channel scales are")
        method = str(cfg.get("quant_method", "fp8"))
        ignored = cfg.get("ignored_layers") or cfg.get("modules_to_not_convert") or []
        return cls(serialized="fp8" in method,
                   activation_scheme=cfg.get("activation_scheme", "dynamic"),
                   ignored_layers=ignored)

    def get_linear_method(self, prefix: str, layer) -> Optional["Fp8LinearMethod"]:
        if is_layer_skipped(prefix, self.ignored_layers, self.packed_modules_mapping,
                            self.ignore_substring):
            return None
        return Fp8LinearMethod(self)

    def verify_device(self, device: torch.device, dtype: torch.dtype, use_triton: bool) -> None:
        if device.type == "cuda" and use_triton:
            index = device.index if device.index is not None else torch.cuda.current_device()
            cap = torch.cuda.get_device_capability(index)
            if cap < (8, 9):
                raise ValueError(
                    f"quantization='fp8' needs fp8 matmuls (compute capability 8.9 or newer: "
                    f"Ada, Hopper); this GPU has {cap[0]}.{cap[1]}. Use an unquantized model "
                    "or kernel_backend='torch' (the slow reference path).")


def _dummy_fp8(data: torch.Tensor, gen: torch.Generator, low: float, high: float) -> None:
    data.copy_(torch.empty(data.shape, device=data.device).uniform_(
        -FP8_MAX, FP8_MAX, generator=gen).to(FP8_DTYPE))


def _dummy_scale(value: float):
    def fill(data: torch.Tensor, gen: torch.Generator, low: float, high: float) -> None:
        data.fill_(value if value > 0 else max(abs(low), abs(high)) / FP8_MAX)
    return fill


def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (w_q [N, K] e4m3, scale [N] fp32), one scale per output row."""
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / FP8_MAX).clamp(min=MIN_SCALE)      # [N]
    return (wf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def _scaled_mm_ok(weight: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """torch._scaled_mm's rowwise-scaled CUTLASS kernel: Hopper+, bf16 out, 16-aligned."""
    if not weight.is_cuda or out_dtype != torch.bfloat16 or not hasattr(torch, "_scaled_mm"):
        return False
    n, k = weight.shape
    return torch.cuda.get_device_capability(weight.device) >= (9, 0) and n % 16 == 0 \
        and k % 16 == 0


class Fp8LinearMethod:
    def __init__(self, config: Fp8Config):
        self.config = config
        self.use_scaled_mm = False

    def create_weights(self, layer, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], input_size: int,
                       output_size: int, params_dtype: torch.dtype) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        layer.params_dtype = params_dtype
        if not self.config.serialized:        # the model's dtype now, fp8 after loading
            layer.register_parameter("weight", new_param(
                torch.empty(n, k, dtype=params_dtype), output_dim=0, input_dim=1))
            return
        layer.register_parameter("weight", new_param(
            torch.empty(n, k, dtype=FP8_DTYPE), output_dim=0, input_dim=1,
            dummy_fill=_dummy_fp8))
        layer.register_parameter("weight_scale", new_param(
            torch.full((n,), float("nan"), dtype=torch.float32), output_dim=0,
            fill_scalar=True, dummy_fill=_dummy_scale(0.0)))
        if self.config.activation_scheme == "static":
            layer.register_parameter("input_scale", new_param(
                torch.full((len(output_partition_sizes),), float("nan"), dtype=torch.float32),
                per_shard=True, dummy_fill=_dummy_scale(4.0 / FP8_MAX)))

    def process_weights_after_loading(self, layer) -> None:
        if not self.config.serialized:
            w_q, scale = quantize_weight_per_channel(layer.weight.data)
            replace_param(layer, "weight", w_q)
            layer.register_parameter("weight_scale", new_param(scale))
        else:
            if torch.isnan(layer.weight_scale.data).any():
                raise ValueError(f"{layer.prefix}: the fp8 checkpoint has no weight_scale for "
                                 "some of this layer's parts")
            if self.config.activation_scheme == "static":
                scales = layer.input_scale.data
                if torch.isnan(scales).any():
                    raise ValueError(f"{layer.prefix}: activation_scheme='static' but the "
                                     "checkpoint lacks an input_scale for some parts")
                replace_param(layer, "input_scale", scales.max().reshape(1))
        self.use_scaled_mm = _scaled_mm_ok(layer.weight, layer.params_dtype)

    def apply(self, layer, x: torch.Tensor, bias: Optional[torch.Tensor] = None):
        x2 = x.reshape(-1, x.shape[-1])                                  # [M, K]
        n = layer.weight.shape[0]
        static = getattr(layer, "input_scale", None)
        if layer.use_triton and x.is_cuda:
            x_q, x_scale = scaled_fp8_quant(x2, static)
            if self.use_scaled_mm and x2.shape[0] > 0:
                if x_scale.numel() == 1:        # rowwise scaling takes a scale per row
                    x_scale = x_scale.expand(x2.shape[0], 1).contiguous()
                y = torch._scaled_mm(x_q, layer.weight.t(), scale_a=x_scale,
                                     scale_b=layer.weight_scale.view(1, n),
                                     out_dtype=x.dtype)
                if bias is not None:
                    y = y + bias
            else:
                y = fp8_gemm(x_q, layer.weight, x_scale, layer.weight_scale, bias, x.dtype)
        else:
            x_q, x_scale = scaled_fp8_quant_ref(x2, static)
            y = fp8_gemm_ref(x_q, layer.weight, x_scale, layer.weight_scale, bias, x.dtype)
        return y.view(*x.shape[:-1], n)
