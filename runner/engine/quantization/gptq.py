"""quantization='gptq': AutoGPTQ / GPTQModel int4 checkpoints, act order (g_idx) included.

The published layout, per linear layer with K input and N output channels, G groups:

    qweight [K / 8, N] int32   packed along K: nibble j of word (r, n) is q[8r + j, n]
    qzeros  [G, N / 8] int32   packed along N: nibble j of word (g, c) is the zero of column
                               8c + j. checkpoint_format 'gptq' (AutoGPTQ) stores zero - 1,
                               'gptq_v2' (GPTQModel) the zero itself
    scales  [G, N]     fp16
    g_idx   [K] int32          the group of each input row: k // group_size, or with act order
                               (desc_act) the order the rows were quantized in
    w[k, n] = (q[k, n] - zero[g_idx[k], n]) * scale[g_idx[k], n]

quantization_config: bits = 4, group_size (-1: one group per channel), desc_act, sym (True:
every zero is 8, qzeros is not read, as vLLM reads symmetric checkpoints), checkpoint_format,
lm_head = false. Without desc_act g_idx is not read (k // group_size, as vLLM). With desc_act a
row-parallel layer keeps all G groups' scales on every rank (its rows come from any group);
otherwise each rank holds its rows' groups. The packed weight is already the kernels' layout
(kernels/int4_gemm.py); int4.to_kernel_layout sorts act-order rows by group.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from kernels.int4_gemm import unpack_int4
from runner.engine.quantization.base import QuantizationConfig, new_param
from runner.engine.quantization.int4 import (PACK, Int4LinearMethod, check_bits_and_group,
                                             check_partition, constant_words, random_words,
                                             small_scales, to_kernel_layout,
                                             unpack_sequential)

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


class GPTQConfig(QuantizationConfig):
    name = "gptq"

    def __init__(self, bits: int, group_size: int, desc_act: bool, sym: bool,
                 checkpoint_format: str = "gptq"):
        self.group_size = check_bits_and_group("gptq", bits, group_size)
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"quantization='gptq' with checkpoint_format="
                             f"{checkpoint_format!r} is not supported; supported: "
                             f"{list(CHECKPOINT_FORMATS)}")
        self.desc_act = bool(desc_act) and group_size != -1
        self.sym = bool(sym)
        self.zero_offset = 1 if checkpoint_format == "gptq" else 0

    @classmethod
    def from_config(cls, cfg: dict) -> "GPTQConfig":
        if cfg.get("lm_head"):
            raise ValueError("quantization='gptq' with a quantized lm_head (lm_head=true) is "
                             "not supported; only the decoder layers' linear layers are")
        for key in ("dynamic", "modules_in_block_to_quantize"):
            if cfg.get(key):
                raise ValueError(f"quantization='gptq' with {key}={cfg[key]!r} (per-module "
                                 "overrides) is not supported")
        return cls(cfg.get("bits"), cfg.get("group_size"), cfg.get("desc_act", False),
                   cfg.get("sym", True), cfg.get("checkpoint_format", "gptq"))

    def get_linear_method(self, prefix: str, layer) -> Optional["GPTQLinearMethod"]:
        return GPTQLinearMethod(self)


class GPTQLinearMethod(Int4LinearMethod):
    name = "gptq"

    def __init__(self, config: GPTQConfig):
        self.config = config

    def create_weights(self, layer, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], input_size: int,
                       output_size: int, params_dtype: torch.dtype) -> None:
        cfg = self.config
        k, n = input_size_per_partition, sum(output_partition_sizes)
        row_parallel = layer.tp_dim == 1
        # a row shard of an act-order or per-channel layer needs groups outside its own rows
        replicated = row_parallel and (cfg.desc_act or cfg.group_size == -1)
        scale_k = input_size if replicated else k
        self.group = scale_k if cfg.group_size == -1 else cfg.group_size
        for part in output_partition_sizes:
            check_partition("gptq", layer.prefix, k, part, self.group,
                            groups_sharded=not replicated)
        groups = -(-scale_k // self.group)
        group_dim = None if replicated else 0
        layer.params_dtype = params_dtype
        layer.register_parameter("qweight", new_param(
            torch.empty(k // PACK, n, dtype=torch.int32), input_dim=0, output_dim=1,
            packed_dim=0, pack_factor=PACK, dummy_fill=random_words))
        layer.register_parameter("g_idx", new_param(
            torch.arange(k, dtype=torch.int32) // self.group, input_dim=0,
            optional=not cfg.desc_act, dummy_fill=self._trivial_g_idx))
        layer.register_parameter("qzeros", new_param(
            torch.empty(groups, n // PACK, dtype=torch.int32), input_dim=group_dim,
            output_dim=1, packed_dim=1, pack_factor=PACK, optional=cfg.sym,
            dummy_fill=constant_words(8 - cfg.zero_offset)))
        layer.register_parameter("scales", new_param(
            torch.empty(groups, n, dtype=params_dtype), input_dim=group_dim, output_dim=1,
            dummy_fill=small_scales))

    def _trivial_g_idx(self, data: torch.Tensor, gen, low, high) -> None:
        data.copy_(torch.arange(data.numel(), device=data.device) // self.group)

    def process_weights_after_loading(self, layer) -> None:
        cfg = self.config
        q = unpack_int4(layer.qweight.data)                                # [K, N]
        scales = layer.scales.data                                         # [G, N]
        if cfg.sym:
            zeros = torch.full(scales.shape, 8.0, device=scales.device)
        else:
            zeros = unpack_sequential(layer.qzeros.data) + cfg.zero_offset  # [G, N]
        g_idx = layer.g_idx.data if cfg.desc_act else None
        if g_idx is not None and (g_idx.min() < 0 or g_idx.max() >= scales.shape[0]):
            raise ValueError(f"{layer.prefix}: g_idx names groups outside 0..{scales.shape[0] - 1}")
        to_kernel_layout(layer, q, scales, zeros, self.group, g_idx)
