"""Activation quantization to fp8 e4m3: per-token dynamic scales, or one static scale.

    scaled_fp8_quant(x [M, K], scale=None) -> (x_q [M, K] float8_e4m3fn, scale)
      scale None (dynamic):  scale [M, 1] fp32 = max(max|x_row| / FP8_MAX, MIN_SCALE)
      scale [1] fp32 (static, a checkpoint's input_scale): used as given, returned as given
      x_q = clamp(x / scale, -FP8_MAX, FP8_MAX), rounded half to even onto the e4m3 grid

The matmul that follows (kernels/fp8_gemm.py or torch._scaled_mm) multiplies each output row by
its scale again, so x ~= x_q * scale row by row. MIN_SCALE keeps an all-zero row from dividing by
zero (its x_q is all zeros either way).

Grid (M,): one program per row. A dynamic row is read twice in BLOCK_K tiles: once for its
absolute maximum, once to quantize and store; rows are short (the hidden size), so the second
read hits L2. Under Triton's CPU interpreter the fp32 -> fp8 cast rounds ties the wrong way, so
values are first rounded onto the fp8 grid in fp32 (`_round_to_fp8_grid`, the KV-cache write's
helper), as the GPU's cast would round them. The launcher reads nothing back from the device:
it is safe inside CUDA-graph capture.
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.reshape_and_cache import _round_to_fp8_grid
from kernels.utils import is_interpreter, next_power_of_2, tl, triton

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)          # 448
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


@triton.jit
def fp8_quant_kernel(
    x_ptr, out_ptr, scale_ptr,
    K, stride_xm, stride_om,
    DYNAMIC: tl.constexpr,          # per-row scale computed here (else one scale read)
    FP8_MAX: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    FP8_ROUND: tl.constexpr,        # interpreter only: round onto the grid before the cast
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    if DYNAMIC:
        amax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            x = tl.load(x_row + k + offs, mask=(k + offs) < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), MIN_SCALE)
        tl.store(scale_ptr + row, scale)
    else:
        scale = tl.load(scale_ptr)
    for k in range(0, K, BLOCK_K):
        mask = (k + offs) < K
        x = tl.load(x_row + k + offs, mask=mask, other=0.0).to(tl.float32)
        # IEEE division (as torch divides), not the approximate one: x_q matches the twin
        q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
        if FP8_ROUND:
            q = _round_to_fp8_grid(q, 3, -6)
        tl.store(out_ptr + row * stride_om + k + offs, q.to(out_ptr.dtype.element_ty), mask=mask)


def scaled_fp8_quant(x: torch.Tensor, scale: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (rows with unit stride along K) -> (x_q [M, K] e4m3, scale [M, 1] or the static
    scale [1])."""
    assert x.dim() == 2, x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    out = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    dynamic = scale is None
    if dynamic:
        scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m == 0:
        return out, scale
    fp8_quant_kernel[(m,)](
        x, out, scale, k, x.stride(0), out.stride(0),
        DYNAMIC=dynamic, FP8_MAX=FP8_MAX, MIN_SCALE=MIN_SCALE, FP8_ROUND=is_interpreter(),
        BLOCK_K=min(next_power_of_2(k), 1024 if not is_interpreter() else 64),
        num_warps=4,
    )
    return out, scale


def scaled_fp8_quant_ref(x: torch.Tensor, scale: Optional[torch.Tensor] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch twin of `scaled_fp8_quant`, and the engine's activation quantization on
    kernel_backend='torch'."""
    xf = x.float()                                                       # [M, K]
    if scale is None:
        amax = xf.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else \
            torch.zeros(x.shape[0], 1, device=x.device)
        scale = (amax / FP8_MAX).clamp(min=MIN_SCALE)                    # [M, 1]
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale
