"""quantization='awq': AutoAWQ's int4 GEMM checkpoints (weight-only, zero points per group).

The published layout (AutoAWQ's WQLinear_GEMM, `version: gemm`), per linear layer with K input
and N output channels and G = K / group_size groups:

    qweight [K, N / 8] int32   8 output channels per word, packed along N in the interleaved
                               order AWQ_ORDER: nibble i (bits 4i..4i+3) of word (k, c) holds
                               column 8c + AWQ_ORDER[i]
    qzeros  [G, N / 8] int32   the zero points, packed the same way
    scales  [G, N]     fp16
    w[k, n] = (q[k, n] - zero[k // group_size, n]) * scale[k // group_size, n]

quantization_config (config.json, or quant_config.json / quantize_config.json): bits (w_bit)
= 4, group_size (q_group_size), zero_point = true, version = gemm, modules_to_not_convert
(substrings of layer names left unquantized). Anything else raises an error naming it. After
loading, int4.to_kernel_layout repacks the weights along K (kernels/int4_gemm.py's layout).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from runner.engine.quantization.base import QuantizationConfig, is_layer_skipped, new_param
from runner.engine.quantization.int4 import (PACK, Int4LinearMethod, check_bits_and_group,
                                             check_partition, constant_words, random_words,
                                             small_scales, to_kernel_layout)

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)          # column of nibble i within its word of 8
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # nibble holding column c


def unpack_awq(words: torch.Tensor) -> torch.Tensor:
    """[R, C] int32 in AWQ's interleaved order -> [R, 8C] int32 (0..15), columns in order."""
    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int32)
    nibbles = (words.unsqueeze(-1) >> shifts) & 0xF                     # [R, C, 8] by nibble
    order = torch.tensor(AWQ_REVERSE_ORDER, device=words.device)
    return nibbles[:, :, order].reshape(words.shape[0], -1)              # [R, 8C] by column


class AWQConfig(QuantizationConfig):
    name = "awq"

    def __init__(self, bits: int, group_size: int, zero_point: bool,
                 modules_to_not_convert: Sequence[str] = ()):
        self.group_size = check_bits_and_group("awq", bits, group_size)
        if not zero_point:
            raise ValueError("quantization='awq' with zero_point=False is not supported; "
                             "AutoAWQ GEMM checkpoints carry zero points")
        self.modules_to_not_convert = list(modules_to_not_convert)

    @classmethod
    def from_config(cls, cfg: dict) -> "AWQConfig":
        version = str(cfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"quantization='awq' with version={cfg.get('version')!r} is not "
                             "supported; supported: 'gemm' (AutoAWQ's default layout)")
        return cls(cfg.get("w_bit", cfg.get("bits")),
                   cfg.get("q_group_size", cfg.get("group_size")),
                   cfg.get("zero_point", True), cfg.get("modules_to_not_convert") or ())

    def get_linear_method(self, prefix: str, layer) -> Optional["AWQLinearMethod"]:
        if is_layer_skipped(prefix, self.modules_to_not_convert, self.packed_modules_mapping,
                            substring=True):
            return None
        return AWQLinearMethod(self)


class AWQLinearMethod(Int4LinearMethod):
    name = "awq"

    def __init__(self, config: AWQConfig):
        self.config = config

    def create_weights(self, layer, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], input_size: int,
                       output_size: int, params_dtype: torch.dtype) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        # group_size -1: one group over all input channels, the same [1, N] row on every rank
        per_channel = self.config.group_size == -1
        group = k if per_channel else self.config.group_size
        for part in output_partition_sizes:
            check_partition("awq", layer.prefix, k, part, group, groups_sharded=True)
        groups = k // group
        group_dim = None if per_channel else 0
        layer.params_dtype = params_dtype
        layer.register_parameter("qweight", new_param(
            torch.empty(k, n // PACK, dtype=torch.int32), input_dim=0, output_dim=1,
            packed_dim=1, pack_factor=PACK, dummy_fill=random_words))
        layer.register_parameter("qzeros", new_param(
            torch.empty(groups, n // PACK, dtype=torch.int32), input_dim=group_dim, output_dim=1,
            packed_dim=1, pack_factor=PACK, dummy_fill=constant_words(8)))
        layer.register_parameter("scales", new_param(
            torch.empty(groups, n, dtype=params_dtype), input_dim=group_dim, output_dim=1,
            dummy_fill=small_scales))
        self.group = group

    def process_weights_after_loading(self, layer) -> None:
        q = unpack_awq(layer.qweight.data)                                 # [K, N]
        zeros = unpack_awq(layer.qzeros.data)                              # [G, N]
        to_kernel_layout(layer, q, layer.scales.data, zeros, self.group)
