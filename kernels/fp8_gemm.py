"""Scaled fp8 matmul: the product of quantized activations and quantized weights, rescaled.

    fp8_gemm(a [M, K] e4m3, b [N, K] e4m3, scale_a [M, 1] | [1] fp32, scale_b [N] fp32,
             bias [N] | None, out_dtype) -> (a @ b^T) * scale_a * scale_b^T + bias   [M, N]

a holds per-token (row) or per-tensor scaled activations (kernels/fp8_quant.py), b a linear
layer's weight with one scale per output channel (row of b). Products of fp8 values are exact
in fp32 and accumulation is fp32; the scales are applied once, to the accumulator, in the
epilogue. On Hopper the engine prefers torch._scaled_mm (CUTLASS rowwise) for bf16 outputs; this
kernel serves the other output dtypes and cards (Ada) and is what the interpreter tests.

Grid (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),), programs grouped GROUP_M tiles down M so that
neighbouring programs share weight tiles in L2. Each program streams [BLOCK_M, BLOCK_K] tiles of
a and [BLOCK_K, BLOCK_N] tiles of b (b is [N, K] row-major: a tile is read as b^T) through
tl.dot. Rows past M and columns past N load clamped (their results are never stored); only K is
masked. Under the CPU interpreter the fp8 tiles are widened to fp32 before the dot (numpy has no
fp8 type); the products are exact either way.
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.utils import cdiv, is_interpreter, tl, triton


@triton.jit
def fp8_gemm_kernel(
    a_ptr, b_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_am, stride_bn, stride_om,
    SCALE_A_ROWS: tl.constexpr,     # scale_a has one value per row (else one for all)
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,           # interpreter: fp32 operands for the dot
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % rows
    pid_n = (pid % (GROUP_M * grid_n)) // rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                     # [BLOCK_M]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                     # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)
    m_ld = tl.minimum(offs_m, M - 1).to(tl.int64)
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)
    a_ptrs = a_ptr + m_ld[:, None] * stride_am + offs_k[None, :]         # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + n_ld[None, :] * stride_bn + offs_k[:, None]         # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_mask = (k + offs_k) < K
        a = tl.load(a_ptrs + k, mask=k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs + k, mask=k_mask[:, None], other=0.0)
        if UPCAST:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    if SCALE_A_ROWS:
        sa = tl.load(scale_a_ptr + m_ld)                                 # [BLOCK_M]
    else:
        sa = tl.load(scale_a_ptr + tl.zeros([BLOCK_M], dtype=tl.int32))
    sb = tl.load(scale_b_ptr + n_ld)                                     # [BLOCK_N]
    acc = acc * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n_ld).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) from the row count only."""
    if is_interpreter():
        return 16, 32, 32, 4, 1
    if m <= 16:
        return 16, 64, 128, 4, 4
    if m <= 64:
        return 64, 128, 128, 4, 4
    return 128, 128, 128, 8, 3


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
             bias: Optional[torch.Tensor] = None,
             out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """a [M, K] and b [N, K] fp8 (unit stride along K), scale_a [M, 1] or [1], scale_b [N]
    (fp32) -> [M, N] out_dtype."""
    m, k = a.shape
    n = b.shape[0]
    assert b.shape[1] == k, (a.shape, b.shape)
    assert a.stride(-1) == 1 and b.stride(-1) == 1, "fp8_gemm needs unit stride along K"
    assert scale_b.numel() == n, (scale_b.shape, n)
    out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    bm, bn, bk, warps, stages = _tiles(m)
    grid = (cdiv(m, bm) * cdiv(n, bn),)
    fp8_gemm_kernel[grid](
        a, b, scale_a, scale_b, bias if bias is not None else scale_b, out,
        m, n, k, a.stride(0), b.stride(0), out.stride(0),
        SCALE_A_ROWS=scale_a.numel() != 1, HAS_BIAS=bias is not None,
        UPCAST=is_interpreter(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        num_warps=warps, num_stages=stages,
    )
    return out


def fp8_gemm_ref(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor,
                 scale_b: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Pure-torch twin of `fp8_gemm`, and the engine's fp8 matmul on kernel_backend='torch':
    dequantize both operands to fp32, multiply, rescale."""
    acc = a.float() @ b.float().t()                                      # [M, N] exact products
    acc = acc * scale_a.float().view(-1, 1) * scale_b.float().view(1, -1)
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype)
