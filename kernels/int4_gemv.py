"""Dequant-GEMV of int4 weights (AWQ / GPTQ, weight-only): the linear layers of a decode step.

    int4_gemv(x [M, K], qweight, scales, zeros, group_size, g_idx, perm, bias) -> [M, N]
    (M <= MAX_M; the int4 layout of kernels/int4_gemm.py; x's dtype)

A decode step reads every weight once for a handful of rows, so the kernel is judged by how
close it streams the packed weights (K * N / 2 bytes) to the card's bandwidth. No tensor cores:
each program owns BLOCK_N output columns for all M rows and keeps one [BLOCK_K / 8, BLOCK_N] fp32
accumulator per row, updated with FMAs (loads and integer/float ALU only in the loop), summed
over its rows after the loop. A [BLOCK_K / 8, BLOCK_N] tile of words is one coalesced load (N
is contiguous); nibble j of it is the weight rows 8r + j, dequantized with the exponent trick
of kernels/int4_gemm.py (no int-to-float conversions, which run at a quarter of the FMA rate).
Columns are masked, not clamped, so the word loads stay 16-byte vectors (4 words) and each
thread's 4 columns share every x value it loads: per weight, about one bit-field extract, an
OR, a subtraction and an FMA (sm_90 PTX of the BLOCK_N = 128 tile), a quarter of an x load.
When a tile lies inside one group, the tile's products of (q - zero) and x are summed first and
the group's scale multiplies that partial once per tile.

Grid (cdiv(N, BLOCK_N), SPLIT_K). With few column blocks (N = 4096 against 132 SMs) K is cut
into SPLIT_K ranges of whole BLOCK_K tiles, each program writing fp32 partial sums to a
[SPLIT_K, M, N] workspace that the launcher adds in split order (deterministic, no atomics).
Tile sizes and the split come from shapes and the SM count only: no autotuning, no host reads,
so a launch is CUDA-graph capturable. The torch twin is kernels/int4_gemm.py's
`int4_gemm_ref`, re-exported here as `int4_gemv_ref`.
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.int4_gemm import MAGIC, MAGIC_F, PACK, group_args, int4_gemm_ref
from kernels.utils import cdiv, is_interpreter, num_sms, tl, triton

MAX_M = 4            # one accumulator tile per row; larger decode batches take int4_gemm
MAX_SPLIT_K = 16


@triton.jit
def _row_fma(acc, w, x_ptr, xk, x_ok):
    """acc [BLOCK_R, BLOCK_N] += w * x[xk] (the row's x values of these weight rows)."""
    xv = tl.load(x_ptr + xk[:, None], mask=x_ok[:, None], other=0.0).to(tl.float32)
    return acc + w * xv                                                  # xv [BLOCK_R, 1]


@triton.jit
def int4_gemv_kernel(
    x_ptr, qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, perm_ptr, bias_ptr, out_ptr, part_ptr,
    M, N, K, group_size, k_per_split,        # k_per_split: a multiple of BLOCK_K
    stride_xm, stride_om,
    M_PAD: tl.constexpr,                     # 1, 2 or 4 (MAX_M)
    HAS_GIDX: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    TILE_GROUP: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    BLOCK_R: tl.constexpr = BLOCK_K // 8
    # contiguous, BLOCK_N-aligned columns: 16-byte loads of 4 words, each thread then holds
    # 4 columns, so one x value it loads feeds 4 FMAs
    offs_n = tl.max_contiguous(tl.multiple_of(pid_n * BLOCK_N + tl.arange(0, BLOCK_N),
                                              BLOCK_N), BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_ok = offs_n < N
    x0 = x_ptr
    x1 = x_ptr + tl.minimum(1, M - 1).to(tl.int64) * stride_xm
    x2 = x_ptr + tl.minimum(2, M - 1).to(tl.int64) * stride_xm
    x3 = x_ptr + tl.minimum(3, M - 1).to(tl.int64) * stride_xm
    acc0 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    for k in range(k_lo, k_hi, BLOCK_K):
        r = k // 8 + offs_r
        r_ok = r < K // 8
        packed = tl.load(qw_ptr + r.to(tl.int64)[:, None] * N + offs_n[None, :],
                         mask=r_ok[:, None] & n_ok[None, :], other=0,
                         eviction_policy="evict_first")                 # [BLOCK_R, BLOCK_N]
        if TILE_GROUP:
            g = k // group_size
            zf = MAGIC_F + tl.load(zeros_ptr + g * N + offs_n, mask=n_ok,
                                   other=0.0).to(tl.float32)            # [BLOCK_N]
            p0 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
            p1 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
            p2 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
            p3 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(8):
            rows = k + offs_r * 8 + j                                    # [BLOCK_R] weight rows
            bits = (((packed >> (4 * j)) & 0xF) | MAGIC).to(tl.float32, bitcast=True)
            if TILE_GROUP:
                w = bits - zf[None, :]                                   # q - z, exact
            else:
                if HAS_GIDX:
                    g_r = tl.load(gidx_ptr + rows, mask=r_ok, other=0)
                else:
                    g_r = rows // group_size
                sz = g_r[:, None] * N + offs_n[None, :]
                sz_ok = r_ok[:, None] & n_ok[None, :]
                w = (bits - (MAGIC_F + tl.load(zeros_ptr + sz, mask=sz_ok, other=0.0)
                             .to(tl.float32))) * \
                    tl.load(scales_ptr + sz, mask=sz_ok, other=0.0).to(tl.float32)
            if HAS_PERM:
                xk = tl.load(perm_ptr + rows, mask=r_ok, other=0)
            else:
                xk = rows
            if TILE_GROUP:
                p0 = _row_fma(p0, w, x0, xk, r_ok)
                if M_PAD > 1:
                    p1 = _row_fma(p1, w, x1, xk, r_ok)
                if M_PAD > 2:
                    p2 = _row_fma(p2, w, x2, xk, r_ok)
                    p3 = _row_fma(p3, w, x3, xk, r_ok)
            else:
                acc0 = _row_fma(acc0, w, x0, xk, r_ok)
                if M_PAD > 1:
                    acc1 = _row_fma(acc1, w, x1, xk, r_ok)
                if M_PAD > 2:
                    acc2 = _row_fma(acc2, w, x2, xk, r_ok)
                    acc3 = _row_fma(acc3, w, x3, xk, r_ok)
        if TILE_GROUP:
            s = tl.load(scales_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            acc0 += p0 * s[None, :]
            if M_PAD > 1:
                acc1 += p1 * s[None, :]
            if M_PAD > 2:
                acc2 += p2 * s[None, :]
                acc3 += p3 * s[None, :]
    _gemv_store(tl.sum(acc0, axis=0), 0, offs_n, n_ok, pid_k, M, N, bias_ptr, out_ptr, part_ptr,
                stride_om, SPLIT, HAS_BIAS)
    if M_PAD > 1:
        _gemv_store(tl.sum(acc1, axis=0), 1, offs_n, n_ok, pid_k, M, N, bias_ptr, out_ptr,
                    part_ptr, stride_om, SPLIT, HAS_BIAS)
    if M_PAD > 2:
        _gemv_store(tl.sum(acc2, axis=0), 2, offs_n, n_ok, pid_k, M, N, bias_ptr, out_ptr,
                    part_ptr, stride_om, SPLIT, HAS_BIAS)
        _gemv_store(tl.sum(acc3, axis=0), 3, offs_n, n_ok, pid_k, M, N, bias_ptr, out_ptr,
                    part_ptr, stride_om, SPLIT, HAS_BIAS)


@triton.jit
def _gemv_store(res, m, offs_n, n_ok, pid_k, M, N, bias_ptr, out_ptr, part_ptr, stride_om,
                SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Row m's [BLOCK_N] result: the output (+ bias), or this split's partial sums."""
    if m < M:
        if SPLIT:
            tl.store(part_ptr + (pid_k * M + m).to(tl.int64) * N + offs_n, res, mask=n_ok)
        else:
            if HAS_BIAS:
                res += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            tl.store(out_ptr + m * stride_om + offs_n, res.to(out_ptr.dtype.element_ty),
                     mask=n_ok)


def gemv_tiles(n: int, k: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, split_k, num_warps) from the shapes and the SM count."""
    if is_interpreter():
        block_n, block_k, warps = 32, 64, 4
    else:
        block_n, block_k, warps = (128 if n >= 8192 else 64), 128, 4
    programs = cdiv(n, block_n)
    tiles_k = cdiv(k, block_k)
    split = max(1, min(cdiv(2 * num_sms(device), programs), tiles_k, MAX_SPLIT_K))
    per_split = cdiv(tiles_k, split)
    return block_n, block_k, cdiv(tiles_k, per_split), warps


def int4_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              zeros: torch.Tensor, group_size: int, g_idx: Optional[torch.Tensor] = None,
              perm: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M <= MAX_M, K] (unit stride along K) -> [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[1]
    if m > MAX_M:
        raise ValueError(f"int4_gemv takes at most {MAX_M} rows, got {m}; use int4_gemm")
    assert qweight.shape[0] * PACK == k, (x.shape, qweight.shape)
    assert x.stride(-1) == 1, "int4_gemv needs unit stride along K"
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_n, block_k, split, warps = gemv_tiles(n, k, x.device)
    per_split = cdiv(cdiv(k, block_k), split) * block_k
    part = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    dummy = qweight
    int4_gemv_kernel[(cdiv(n, block_n), split)](
        x, qweight, scales, zeros, g_idx if g_idx is not None else dummy,
        perm if perm is not None else dummy, bias if bias is not None else scales, out, part,
        m, n, k, group_size, per_split, x.stride(0), out.stride(0),
        M_PAD=1 if m == 1 else (2 if m == 2 else 4),
        HAS_PERM=perm is not None, HAS_BIAS=bias is not None, SPLIT=split > 1,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        num_stages=1 if is_interpreter() else 3,
        **group_args(group_size, block_k, g_idx),
    )
    if split > 1:
        res = part.sum(dim=0)                       # splits added in order: deterministic
        if bias is not None:
            res += bias.float()
        out.copy_(res)
    return out


# the GEMV computes the same function as the GEMM: one torch twin for both
int4_gemv_ref = int4_gemm_ref
