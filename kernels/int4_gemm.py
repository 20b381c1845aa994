"""Dequant-GEMM of int4 weights (AWQ / GPTQ, weight-only): prefill-sized matmuls.

The engine's int4 layout, which runner/engine/quantization/ repacks AWQ and GPTQ checkpoints
into (both kernels here and in kernels/int4_gemv.py read it):

    qweight [K // 8, N] int32   word (r, n) holds q[8r + j, n] (0..15) in bits 4j..4j+3
    scales  [G, N]  act dtype   one row per group of input rows
    zeros   [G, N]  act dtype   zero points (integers 0..15, stored as floats)
    w[k, n] = (q[k, n] - zeros[g(k), n]) * scales[g(k), n]
              g(k) = k // group_size, or g_idx[k] when the layer carries g_idx ([K] int32)
    perm    [K] int32 | None    act order: row k of the weight multiplies x[:, perm[k]]

    int4_gemm(x [M, K], ...) -> x[:, perm] @ w (+ bias)   [M, N], x's dtype

Packing along K keeps the N axis contiguous: a [BLOCK_K / 8, BLOCK_N] tile of words is a
coalesced load, and nibble j of it is the weight rows 8r + j. Grid (cdiv(M, BLOCK_M) *
cdiv(N, BLOCK_N),), grouped GROUP_M tiles down M for L2 reuse of weight tiles. Per K tile and
nibble j a program loads x's columns k + 8r + j ([BLOCK_M, BLOCK_K / 8], strided by 8: the
eight loads together read the tile once), dequantizes the nibble rows and runs tl.dot. Columns past N are
masked (not clamped, which would break the 16-byte word loads), rows past M clamped. Nibbles
become floats with the exponent trick: (q | 0x4B000000) read as fp32 is 2^23 + q exactly, so
one subtraction of (2^23 + zero) gives q - zero without an int-to-float conversion. When a tile
lies inside one group (no g_idx, BLOCK_K divides group_size) q - zero is an exact small integer
in any dtype, goes into the dot as is, and the group's scale multiplies the tile's partial sum
once; otherwise each row gathers its group's scale and zero. fp32 models dot in IEEE fp32;
under the interpreter bf16 operands are widened (kernels/utils.dot_upcast).
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.utils import cdiv, dot_upcast, is_interpreter, tl, triton

PACK = 8                      # 4-bit values per int32 word
# fp32 bits of 2^23: (MAGIC | q) read as fp32 is 2^23 + q for 0 <= q < 2^23
MAGIC = tl.constexpr(0x4B000000)
MAGIC_F = tl.constexpr(8388608.0)


# ---------------------------------------------------------------------------- layout helpers
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q [K, N] integers 0..15 -> qweight [K // 8, N] int32 (nibble j = row 8r + j)."""
    k, n = q.shape
    assert k % PACK == 0, f"K={k} is not a multiple of {PACK}"
    q = q.to(torch.int64).view(k // PACK, PACK, n)
    shifts = (torch.arange(PACK, device=q.device, dtype=torch.int64) * 4).view(1, PACK, 1)
    words = (q << shifts).sum(dim=1)                                     # [K/8, N] < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [K // 8, N] int32 -> q [K, N] int32 (0..15)."""
    r, n = qweight.shape
    shifts = (torch.arange(PACK, device=qweight.device, dtype=torch.int32) * 4).view(1, PACK, 1)
    return ((qweight.unsqueeze(1) >> shifts) & 0xF).reshape(r * PACK, n)


def dequantize_int4_ref(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                        group_size: int, g_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The layout above -> w [K, N] float32."""
    q = unpack_int4(qweight).float()                                     # [K, N]
    k = q.shape[0]
    groups = g_idx.long() if g_idx is not None else \
        torch.arange(k, device=q.device) // group_size                  # [K]
    return (q - zeros.float()[groups]) * scales.float()[groups]


# ---------------------------------------------------------------------------- kernel
@triton.jit
def int4_gemm_kernel(
    x_ptr, qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, perm_ptr, bias_ptr, out_ptr,
    M, N, K, group_size,
    stride_xm, stride_om,
    HAS_GIDX: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    TILE_GROUP: tl.constexpr,       # every K tile lies inside one group
    DOT_DTYPE: tl.constexpr,        # the dot's operand type (x's, or fp32)
    DOT_PRECISION: tl.constexpr,
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

    BLOCK_R: tl.constexpr = BLOCK_K // 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # columns are masked, not clamped: the word loads stay 16-byte vectors
    offs_n = tl.max_contiguous(tl.multiple_of(pid_n * BLOCK_N + tl.arange(0, BLOCK_N),
                                              BLOCK_N), BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)                                       # packed rows of a tile
    m_ld = tl.minimum(offs_m, M - 1).to(tl.int64)
    n_ok = offs_n < N
    x_rows = x_ptr + m_ld[:, None] * stride_xm                           # [BLOCK_M, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        r = k // 8 + offs_r                                              # [BLOCK_R]
        r_ok = r < K // 8
        packed = tl.load(qw_ptr + r.to(tl.int64)[:, None] * N + offs_n[None, :],
                         mask=r_ok[:, None] & n_ok[None, :], other=0)    # [BLOCK_R, BLOCK_N]
        if TILE_GROUP:
            g = k // group_size
            s = tl.load(scales_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            zf = MAGIC_F + tl.load(zeros_ptr + g * N + offs_n, mask=n_ok,
                                   other=0.0).to(tl.float32)            # [BLOCK_N]
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(8):
            kk = k + offs_r * 8 + j                                      # [BLOCK_R] weight rows
            bits = (((packed >> (4 * j)) & 0xF) | MAGIC).to(tl.float32, bitcast=True)
            if TILE_GROUP:
                w = bits - zf[None, :]                                   # q - z, exact
            else:
                if HAS_GIDX:
                    g_r = tl.load(gidx_ptr + kk, mask=r_ok, other=0)
                else:
                    g_r = kk // group_size
                sz = g_r[:, None] * N + offs_n[None, :]
                sz_ok = r_ok[:, None] & n_ok[None, :]
                w = (bits - (MAGIC_F + tl.load(zeros_ptr + sz, mask=sz_ok, other=0.0)
                             .to(tl.float32))) * \
                    tl.load(scales_ptr + sz, mask=sz_ok, other=0.0).to(tl.float32)
            if HAS_PERM:
                xk = tl.load(perm_ptr + kk, mask=r_ok, other=0)
            else:
                xk = kk
            xt = tl.load(x_rows + xk[None, :], mask=r_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_R]
            if TILE_GROUP:
                part = tl.dot(xt.to(DOT_DTYPE), w.to(DOT_DTYPE), part,
                              input_precision=DOT_PRECISION)
            else:
                acc = tl.dot(xt.to(DOT_DTYPE), w.to(DOT_DTYPE), acc,
                             input_precision=DOT_PRECISION)
        if TILE_GROUP:
            acc += part * s[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & n_ok[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def _tiles(m: int, itemsize: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) from the row count and the element
    size of x (BLOCK_K >= 128: a nibble's BLOCK_K / 8 rows are the dot's K side, at least 16).
    float32 (the exactness path, FMA dots) takes the small tile with two stages at every M: its
    four-stage tile needed 232 KiB of shared memory, over an H200's 227 KiB."""
    if is_interpreter():
        return 16, 32, 128, 4, 1
    if itemsize > 2:
        return 16, 64, 128, 4, 2
    if m <= 16:
        return 16, 64, 128, 4, 4
    if m <= 64:
        return 64, 64, 128, 4, 3
    return 128, 128, 128, 8, 3


def group_args(group_size: int, block_k: int, g_idx: Optional[torch.Tensor]) -> dict:
    """The constexprs both int4 kernels share."""
    return dict(HAS_GIDX=g_idx is not None,
                TILE_GROUP=g_idx is None and group_size % block_k == 0)


def int4_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              zeros: torch.Tensor, group_size: int, g_idx: Optional[torch.Tensor] = None,
              perm: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] (unit stride along K) and the int4 layout above -> [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[1]
    assert qweight.shape[0] * PACK == k, (x.shape, qweight.shape)
    assert x.stride(-1) == 1, "int4_gemm needs unit stride along K"
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    bm, bn, bk, warps, stages = _tiles(m, x.element_size())
    dummy = qweight
    int4_gemm_kernel[(cdiv(m, bm) * cdiv(n, bn),)](
        x, qweight, scales, zeros, g_idx if g_idx is not None else dummy,
        perm if perm is not None else dummy, bias if bias is not None else scales, out,
        m, n, k, group_size, x.stride(0), out.stride(0),
        HAS_PERM=perm is not None, HAS_BIAS=bias is not None,
        DOT_DTYPE=tl.float32 if x.dtype == torch.float32 or dot_upcast(x.dtype)
        else _TL_DTYPES[x.dtype],
        DOT_PRECISION="ieee" if x.dtype == torch.float32 or is_interpreter() else "tf32",
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        num_warps=warps, num_stages=stages,
        **group_args(group_size, bk, g_idx),
    )
    return out


def int4_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  zeros: torch.Tensor, group_size: int, g_idx: Optional[torch.Tensor] = None,
                  perm: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pure-torch twin of `int4_gemm` (and of kernels/int4_gemv.py's kernel), and the engine's
    int4 matmul on kernel_backend='torch': dequantize to fp32, then one matmul."""
    w = dequantize_int4_ref(qweight, scales, zeros, group_size, g_idx)  # [K, N]
    xf = (x[:, perm.long()] if perm is not None else x).float()
    y = xf @ w
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
