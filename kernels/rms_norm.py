"""RMSNorm, alone and fused with the residual add that precedes it in every decoder layer.

    rms_norm(x [..., H], weight [H], eps) -> [..., H]
    fused_add_rms_norm(x, residual, weight, eps) -> (rms_norm(x + residual), x + residual)

One program normalises one row. The numerics are HF's LlamaRMSNorm, which `rms_norm_ref` spells
out (the engine's RMSNorm layer runs it on kernel_backend='torch'): the residual sum is rounded
to the activation dtype (it is what the next layer receives), the mean of squares and the
scaling run in fp32, and the normalised row is rounded to the input dtype before the weight
multiplies it.
"""
from __future__ import annotations

import torch

from kernels.utils import next_power_of_2, tl, triton


@triton.jit
def rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    stride_x, stride_r, stride_o, stride_ro,
    hidden_size, eps,
    BLOCK: tl.constexpr,                        # hidden_size padded to a power of two
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK]
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        # round the sum first: the norm must see exactly the residual the next layer adds to
        summed = (x + r).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    variance = tl.sum(x * x, axis=0) / hidden_size
    x_normed = (x * tl.rsqrt(variance + eps)).to(x_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = x_normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _num_warps(block: int) -> int:
    # ~8-16 elements per thread keeps loads vectorised without spilling
    return 4 if block <= 1024 else 8 if block <= 8192 else 16


def _launch(x, residual, weight, eps):
    hidden_size = x.shape[-1]
    assert weight.shape == (hidden_size,), (weight.shape, x.shape)
    x2 = x.reshape(-1, hidden_size)                                      # [T, H]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype),
                      device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, hidden_size)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        residual_out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, residual.dtype),
                                   device=x.device)
    else:
        r2 = residual_out = x2        # unused by the HAS_RESIDUAL=False variant
    weight = weight.contiguous()
    if x2.shape[0] > 0:
        block = next_power_of_2(hidden_size)
        rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, residual_out,
            x2.stride(0), r2.stride(0), out.stride(0), residual_out.stride(0),
            hidden_size, eps,
            BLOCK=block,
            HAS_RESIDUAL=residual is not None,
            num_warps=_num_warps(block),
        )
    out = out.view(x.shape)
    if residual is None:
        return out, None
    return out, residual_out.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in promote(x.dtype, weight.dtype)."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., H] -> (rms_norm(x + residual), x + residual) as new tensors."""
    assert residual.shape == x.shape, (residual.shape, x.shape)
    return _launch(x, residual, weight, eps)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Pure-torch twin of `rms_norm`, and the engine's RMSNorm on kernel_backend='torch'."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch twin of `fused_add_rms_norm`."""
    residual = x + residual
    return rms_norm_ref(residual, weight, eps), residual
