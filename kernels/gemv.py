"""GEMV for small M: the linear layers of a decode step, where the weight read is all the cost.

    gemv(x [M, K], weight [N, K], bias [N] | None) -> x @ weight^T + bias   [M, N], x's dtype

M is a decode batch (1..MAX_M rows); the weight is row-major [N, K] (stride(-1) == 1) and is
read from HBM exactly once, so the kernels are judged by effective bandwidth (weight bytes /
time), not FLOPs. Accumulation is fp32.

Grid (cdiv(N, BLOCK_N), SPLIT_K). A program owns BLOCK_N output rows for all M inputs and
streams [BLOCK_N, BLOCK_K] weight tiles along K (rows contiguous: coalesced 16-byte loads,
evict-first so the weight does not push x out of L2), beside the matching slice of x (tiny,
cache-resident). Two kernels:

  - gemv_fma_kernel (M <= FMA_MAX_M): one [BLOCK_N, BLOCK_K] fp32 accumulator per batch row,
    updated elementwise (loads and FMAs only in the loop) and summed over K after it. The x
    rows are loaded as [1, BLOCK_K] with BLOCK_K >= fma_block_k, which gives them the weight
    tile's register layout: no layout conversion, no shared memory in the loop.
  - gemv_dot_kernel: acc [BLOCK_N, M_PAD] += w @ x^T on tensor cores ("swap AB": weight rows
    are the MMA's M side, the batch padded to 16 its N side; the padding is free on a
    memory-bound loop), tiles pipelined through shared memory over num_stages stages.

Split-K (the fp32 tiles; the measured 16-bit ones never split): when N / BLOCK_N programs are
too few to keep enough bytes in flight on every SM (N = 4096 with K = 14336, say), K is cut
into SPLIT_K ranges of whole BLOCK_K tiles; each program writes fp32 partial sums to a
[SPLIT_K, M, N] workspace and gemv_split_reduce_kernel adds them in split order
(deterministic, unlike atomics), adds the bias and casts.

Rows past N and batch rows past M load clamped (the last valid row) instead of masked, so the
weight loads carry no mask unless K is not a multiple of BLOCK_K; only the stores are masked.
Tile configs come from `gemv_config` (shapes, dtype and SM count only: no autotuning, no host
reads of device values), so a launch is deterministic and CUDA-graph capturable; callers such
as scripts/bench_gemv.py may pass an explicit `GemvConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kernels.utils import (cdiv, dot_precision, dot_upcast, is_interpreter, next_power_of_2,
                           num_sms, tl, triton)

MAX_M = 16          # the largest batch; larger M is a GEMM (F.linear / cuBLAS)
FMA_MAX_M = 4       # the FMA kernel keeps one accumulator tile per batch row
MAX_SPLIT_K = 16


@dataclass(frozen=True)
class GemvConfig:
    block_n: int      # output rows (weight rows) per program
    block_k: int      # K elements per weight tile
    num_warps: int
    num_stages: int
    split_k: int = 1  # K ranges, each its own program; > 1 adds the reduce kernel
    use_dot: bool = False


@triton.jit
def _load_k(ptrs, k, offs_k, K, EVEN_K: tl.constexpr, POLICY: tl.constexpr):
    """The tile at ptrs + k, [R, BLOCK_K]; masked on K only where K is not a multiple of
    BLOCK_K (then only the last tile is partial)."""
    if EVEN_K:
        return tl.load(ptrs + k, eviction_policy=POLICY)
    else:
        return tl.load(ptrs + k, mask=((k + offs_k) < K)[None, :], other=0.0,
                       eviction_policy=POLICY)


@triton.jit
def _gemv_epilogue(res, offs_m, offs_n, pid_k, M, N, bias_ptr, out_ptr, part_ptr, stride_om,
                   SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """res [R, BLOCK_N] fp32 for batch rows offs_m [R]: the output (+ bias), or this split's
    partial sums."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT:
        part = part_ptr + (pid_k * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
        tl.store(part, res, mask=mask)
    else:
        if HAS_BIAS:
            res += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        tl.store(out, res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gemv_fma_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, part_ptr,
    M, N, K, k_per_split,                       # k_per_split: a multiple of BLOCK_K
    stride_xm, stride_wn, stride_om,
    M_PAD: tl.constexpr,                        # 1, 2 or 4 (FMA_MAX_M)
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    EVEN_K: tl.constexpr,                       # K % BLOCK_K == 0: no K mask at all
    SPLIT: tl.constexpr,                        # write fp32 partials instead of the output
    HAS_BIAS: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_K] fp32 accumulator per batch row, updated elementwise with w * x
    and summed over K once after the loop. Each x row is loaded as [1, BLOCK_K]: with
    BLOCK_K >= 32 * num_warps * (16 bytes of elements) it gets the weight tile's register layout,
    so the loop needs no layout conversion (a 3-D [M, BLOCK_N, BLOCK_K] product would route the
    weight tile through shared memory every iteration)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                    # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)                                      # [BLOCK_K]
    # clamped rows re-read valid memory; their results are never stored
    n_ld = tl.minimum(offs_n, N - 1)
    w_ptrs = w_ptr + n_ld.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]   # [BLOCK_N, BLOCK_K]
    x0_ptrs = x_ptr + offs_k[None, :]                                   # [1, BLOCK_K] per row
    x1_ptrs = x0_ptrs + tl.minimum(1, M - 1).to(tl.int64) * stride_xm
    x2_ptrs = x0_ptrs + tl.minimum(2, M - 1).to(tl.int64) * stride_xm
    x3_ptrs = x0_ptrs + tl.minimum(3, M - 1).to(tl.int64) * stride_xm

    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    acc0 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
        # streamed once: do not let the weight push x (reused by every program) out of L2
        w = _load_k(w_ptrs, k, offs_k, K, EVEN_K, "evict_first").to(tl.float32)
        x0 = _load_k(x0_ptrs, k, offs_k, K, EVEN_K, "evict_last")
        acc0 += w * x0.to(tl.float32)
        if M_PAD > 1:
            x1 = _load_k(x1_ptrs, k, offs_k, K, EVEN_K, "evict_last")
            acc1 += w * x1.to(tl.float32)
        if M_PAD > 2:
            x2 = _load_k(x2_ptrs, k, offs_k, K, EVEN_K, "evict_last")
            x3 = _load_k(x3_ptrs, k, offs_k, K, EVEN_K, "evict_last")
            acc2 += w * x2.to(tl.float32)
            acc3 += w * x3.to(tl.float32)

    row = tl.arange(0, 1)                                               # [1]
    _gemv_epilogue(tl.sum(acc0, axis=1)[None, :], row, offs_n, pid_k, M, N, bias_ptr, out_ptr,
                   part_ptr, stride_om, SPLIT, HAS_BIAS)
    if M_PAD > 1:
        _gemv_epilogue(tl.sum(acc1, axis=1)[None, :], row + 1, offs_n, pid_k, M, N, bias_ptr,
                       out_ptr, part_ptr, stride_om, SPLIT, HAS_BIAS)
    if M_PAD > 2:
        _gemv_epilogue(tl.sum(acc2, axis=1)[None, :], row + 2, offs_n, pid_k, M, N, bias_ptr,
                       out_ptr, part_ptr, stride_om, SPLIT, HAS_BIAS)
        _gemv_epilogue(tl.sum(acc3, axis=1)[None, :], row + 3, offs_n, pid_k, M, N, bias_ptr,
                       out_ptr, part_ptr, stride_om, SPLIT, HAS_BIAS)


@triton.jit
def gemv_dot_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, part_ptr,
    M, N, K, k_per_split,                       # k_per_split: a multiple of BLOCK_K
    stride_xm, stride_wn, stride_om,
    M_PAD: tl.constexpr,                        # next power of two >= M, at least 16
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    """acc [BLOCK_N, M_PAD] += w @ x^T on tensor cores ("swap AB": the weight rows are the
    MMA's M side, the padded batch its N side); the tiles are software-pipelined through shared
    memory over NUM_STAGES stages."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                    # [BLOCK_N]
    offs_m = tl.arange(0, M_PAD)                                        # [M_PAD]
    offs_k = tl.arange(0, BLOCK_K)                                      # [BLOCK_K]
    n_ld = tl.minimum(offs_n, N - 1)
    m_ld = tl.minimum(offs_m, M - 1)
    w_ptrs = w_ptr + n_ld.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]   # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + m_ld.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]   # [M_PAD, BLOCK_K]

    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    acc = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)
    for k in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
        w = _load_k(w_ptrs, k, offs_k, K, EVEN_K, "evict_first")            # [BLOCK_N, BLOCK_K]
        x = _load_k(x_ptrs, k, offs_k, K, EVEN_K, "evict_last")             # [M_PAD, BLOCK_K]
        if DOT_UPCAST:          # the interpreter's bf16 dot is wrong; fp32 is the same math
            w = w.to(tl.float32)
            x = x.to(tl.float32)
        acc = tl.dot(w, tl.trans(x), acc, input_precision=DOT_PRECISION)

    _gemv_epilogue(tl.trans(acc), offs_m, offs_n, pid_k, M, N, bias_ptr, out_ptr, part_ptr,
                   stride_om, SPLIT, HAS_BIAS)


@triton.jit
def gemv_split_reduce_kernel(
    part_ptr, bias_ptr, out_ptr,
    M, N, split_k, stride_om,
    BLOCK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """out[m, n] = sum over splits (in split order) of part[s, m, n] + bias[n]."""
    m = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(split_k):
        acc += tl.load(part_ptr + (s * M + m) * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def m_pad(m: int, use_dot: bool) -> int:
    """Padded batch rows of a kernel: a power of two, at least 16 for tl.dot."""
    return max(16, next_power_of_2(m)) if use_dot else next_power_of_2(m)


def fma_block_k(dtype: torch.dtype, num_warps: int) -> int:
    """The smallest BLOCK_K of the FMA kernel whose x rows share the weight tile's layout:
    one 16-byte vector per thread across all the warps."""
    return (16 // dtype.itemsize) * 32 * num_warps


def pick_split_k(n: int, k: int, block_n: int, block_k: int, sms: int) -> int:
    """Split K until about 4 programs per SM are running (enough weight bytes in flight to
    cover HBM latency), keeping at least 4 tiles per split; a power of two (few variants)."""
    programs = cdiv(n, block_n)
    target = 4 * sms
    if programs >= target:
        return 1
    split = min(cdiv(target, programs), max(1, k // (4 * block_k)), MAX_SPLIT_K)
    return 1 << (max(split, 1).bit_length() - 1)


def gemv_config(m: int, n: int, k: int, dtype: torch.dtype, sms: int) -> GemvConfig:
    """Tiles from static shapes only (CUDA-graph safe, deterministic).

    16-bit types, the winners of scripts/bench_gemv.py's sweep on an H100 (2026-11-23, the
    Llama-3-8B and Llama-2-13B decode shapes; docs/benchmarks.md): M = 1 takes the FMA kernel
    with 2-row x 1024 tiles, 4 warps, 1 stage; M = 2 4-row tiles with 3 stages; M >= 3 tl.dot
    over 64 x 128 tiles with 6 stages. No split-K: on these shapes it never won (the
    unsplit programs already keep enough bytes in flight).
    fp32 (not measured): FMA BLOCK_N for 64 accumulators per thread, or 32 x 64 dot tiles with
    2 stages (the dot runs on FMA units at IEEE precision), split-K by `pick_split_k`.
    """
    mp = next_power_of_2(m)
    use_dot = mp > 2
    if is_interpreter():
        # small tiles so that the small CPU test shapes cross several tiles and splits
        block_n, block_k, warps, stages = 16, 32, 4, 1
    elif dtype.itemsize == 2:
        if mp == 1:
            return GemvConfig(2, fma_block_k(dtype, 4), 4, 1)
        if mp == 2:
            return GemvConfig(4, fma_block_k(dtype, 4), 4, 3)
        return GemvConfig(64, 128, 4, 6, use_dot=True)
    elif use_dot:
        block_n, block_k, warps, stages = (64, 128, 4, 4) if dtype.itemsize == 2 else \
            (32, 64, 4, 2)
    else:
        warps, stages = 4, 1
        block_k = fma_block_k(dtype, warps)
        block_n = 64 // (mp * (16 // dtype.itemsize))
    split = pick_split_k(n, k, block_n, block_k, sms)
    return GemvConfig(block_n, block_k, warps, stages, split, use_dot)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
         out: Optional[torch.Tensor] = None,
         config: Optional[GemvConfig] = None) -> torch.Tensor:
    """x [M, K] (1 <= M <= MAX_M) @ weight[N, K]^T (+ bias [N]) -> [M, N] in x's dtype.

    out: optional preallocated [M, N] buffer (stride(-1) == 1); config: explicit tiles (the
    benchmark's sweep), else `gemv_config` picks them.
    """
    if x.dim() != 2:
        raise ValueError(f"gemv takes x [M, K], got {tuple(x.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    if m > MAX_M:
        raise ValueError(f"gemv supports at most MAX_M={MAX_M} rows, got M={m}; "
                         f"use F.linear for larger batches")
    if weight.shape != (n, k) or weight.stride(-1) != 1:
        raise ValueError(f"weight must be row-major [N, K={k}], got {tuple(weight.shape)} "
                         f"with strides {weight.stride()}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        raise ValueError(f"gemv takes fp32/fp16/bf16 x and a weight of the same dtype, got "
                         f"{x.dtype} and {weight.dtype}")
    if bias is not None:
        assert bias.shape == (n,), (bias.shape, n)
        bias = bias.contiguous()
    if x.stride(-1) != 1:
        x = x.contiguous()                                              # [M, K], tiny
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    assert out.shape == (m, n) and out.dtype == x.dtype and out.stride(-1) == 1, \
        (out.shape, out.dtype, out.stride())
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.copy_(bias.expand(m, n) if bias is not None else torch.zeros_like(out))
    cfg = config or gemv_config(m, n, k, x.dtype, num_sms(x.device))
    split = max(1, min(cfg.split_k, cdiv(k, cfg.block_k)))
    k_per_split = cdiv(cdiv(k, split), cfg.block_k) * cfg.block_k
    split = cdiv(k, k_per_split)            # no empty trailing split
    part = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 \
        else out                            # unused by the unsplit kernel variant
    if not cfg.use_dot and m > FMA_MAX_M:
        raise ValueError(f"the FMA kernel takes at most {FMA_MAX_M} rows, got M={m}: {cfg}")
    grid = (cdiv(n, cfg.block_n), split)
    args = (x, weight, bias if bias is not None else out, out, part,
            m, n, k, k_per_split,
            x.stride(0), weight.stride(0), out.stride(0))
    common = dict(M_PAD=m_pad(m, cfg.use_dot), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  NUM_STAGES=cfg.num_stages, EVEN_K=k % cfg.block_k == 0, SPLIT=split > 1,
                  HAS_BIAS=bias is not None, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    if cfg.use_dot:
        gemv_dot_kernel[grid](*args, DOT_PRECISION=dot_precision(x.dtype),
                              DOT_UPCAST=dot_upcast(x.dtype), **common)
    else:
        gemv_fma_kernel[grid](*args, **common)
    if split > 1:
        block = min(1024, next_power_of_2(n))
        gemv_split_reduce_kernel[(m, cdiv(n, block))](
            part, bias if bias is not None else out, out,
            m, n, split, out.stride(0),
            BLOCK=block,
            HAS_BIAS=bias is not None,
            num_warps=4,
        )
    return out


def gemv_ref(x: torch.Tensor, weight: torch.Tensor,
             bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pure-torch twin of `gemv`: F.linear in fp32, cast to x's dtype."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return y.to(x.dtype)
