"""What AWQ and GPTQ share once loaded: int4 weight-only linear layers in the kernels' layout.

    awq.py / gptq.py: create_weights in the checkpoint's published layout, then
    process_weights_after_loading -> to_kernel_layout(layer, q [K, N], zeros [G, N], ...):
        qweight [K / 8, N] int32, scales [G, N], zeros [G, N] (model dtype), and for act order
        perm [K] int32 (+ g_idx [K] int32 when the sorted groups are not contiguous runs)
    apply(x [T, K]) -> [T, N]:
        Triton backend on CUDA: kernels/int4_gemv.py for decode batches (<= GEMV_MAX_M rows),
        kernels/int4_gemm.py for prefill chunks;
        kernel_backend='torch' (and CPU): int4_gemm_ref, dequantize then matmul

The layout itself (nibble order, the dequantization formula) is documented in
kernels/int4_gemm.py, which owns it.
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.int4_gemm import int4_gemm, int4_gemm_ref, pack_int4, unpack_int4
from kernels.int4_gemv import MAX_M as GEMV_MAX_M
from kernels.int4_gemv import int4_gemv
from runner.engine.quantization.base import new_param

SUPPORTED_BITS = (4,)
PACK = 8


def check_bits_and_group(method: str, bits, group_size) -> int:
    """The checkpoint's bits and group_size, validated; returns group_size."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantization={method!r} with bits={bits} is not supported; "
                         f"supported bits: {list(SUPPORTED_BITS)}")
    if not isinstance(group_size, int) or (group_size != -1 and group_size <= 0):
        raise ValueError(f"quantization={method!r} with group_size={group_size!r} is not "
                         "supported; use a positive group size or -1 (one group per channel)")
    return group_size


def check_partition(method: str, prefix: str, k: int, n: int, group_size: int,
                    groups_sharded: bool) -> None:
    if k % PACK or n % PACK:
        raise ValueError(f"quantization={method!r}: layer {prefix!r} has input {k} and output "
                         f"{n} per rank; both must be multiples of {PACK} (packed int4)")
    if groups_sharded and group_size != -1 and k % group_size:
        raise ValueError(f"quantization={method!r}: layer {prefix!r} has {k} input channels per "
                         f"rank, not a multiple of group_size={group_size}; use a "
                         "tensor_parallel_size that keeps whole groups on each rank")


def random_words(data: torch.Tensor, gen: torch.Generator, low: float, high: float) -> None:
    """Dummy packed weights: uniform random bits (every nibble is a valid 4-bit value)."""
    words = torch.randint(0, 2**32, data.shape, generator=gen, device=data.device,
                          dtype=torch.int64)
    data.copy_(torch.where(words >= 2**31, words - 2**32, words).to(torch.int32))


def constant_words(nibble: int):
    """Dummy packed zero points: every nibble `nibble`."""
    word = sum(nibble << (4 * j) for j in range(PACK))
    value = word - 2**32 if word >= 2**31 else word

    def fill(data: torch.Tensor, gen, low, high) -> None:
        data.fill_(value)
    return fill


def small_scales(data: torch.Tensor, gen: torch.Generator, low: float, high: float) -> None:
    """Dummy scales: (q - 8) * s stays inside [low, high] like an unquantized dummy weight."""
    tmp = torch.empty(data.shape, device=data.device).uniform_(low, high, generator=gen)
    data.copy_(tmp / 8)


def to_kernel_layout(layer, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     group_size: int, g_idx: Optional[torch.Tensor] = None) -> None:
    """Replace a layer's checkpoint parameters with the kernels' layout.

    q [K, N] int (0..15), scales / zeros [G, N], group_size the rows per group (K for one
    group), g_idx [K] (act order) or None. Act order sorts the weight rows by group, so each
    group's rows are contiguous and the kernels gather x's columns through perm instead."""
    k = q.shape[0]
    perm = None
    if g_idx is not None:
        g_idx = g_idx.to(torch.int64)
        if torch.equal(g_idx, torch.arange(k, device=g_idx.device) // group_size):
            g_idx = None                                    # act order that changed nothing
        else:
            perm = torch.argsort(g_idx, stable=True)        # [K]
            q, g_idx = q[perm], g_idx[perm]
            if torch.equal(g_idx, torch.arange(k, device=g_idx.device) // group_size):
                g_idx = None                                # contiguous groups after the sort
    for name in [n for n, _ in layer.named_parameters(recurse=False) if n != "bias"]:
        delattr(layer, name)
    dtype = layer.params_dtype
    layer.register_parameter("qweight", new_param(pack_int4(q)))           # [K/8, N]
    layer.register_parameter("scales", new_param(scales.to(dtype).contiguous()))
    layer.register_parameter("zeros", new_param(zeros.to(dtype).contiguous()))
    layer.register_parameter("g_idx", None if g_idx is None else
                             new_param(g_idx.to(torch.int32).contiguous()))
    layer.register_parameter("perm", None if perm is None else
                             new_param(perm.to(torch.int32).contiguous()))
    layer.int4_group_size = group_size


class Int4LinearMethod:
    """apply() of every int4 layer, on the layout to_kernel_layout leaves."""
    name = "int4"

    def apply(self, layer, x: torch.Tensor, bias: Optional[torch.Tensor] = None):
        x2 = x.reshape(-1, x.shape[-1])                                  # [M, K]
        args = (layer.qweight, layer.scales, layer.zeros, layer.int4_group_size, layer.g_idx,
                layer.perm, bias)
        if layer.use_triton and x.is_cuda:
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            y = int4_gemv(x2, *args) if x2.shape[0] <= GEMV_MAX_M else int4_gemm(x2, *args)
        else:
            y = int4_gemm_ref(x2, *args)
        return y.view(*x.shape[:-1], layer.qweight.shape[1])


def unpack_sequential(words: torch.Tensor) -> torch.Tensor:
    """[R, C] int32 with 8 nibbles per word, nibble j = column 8c + j (GPTQ qzeros) ->
    [R, 8C] int32."""
    return unpack_int4(words.t().contiguous()).t()
