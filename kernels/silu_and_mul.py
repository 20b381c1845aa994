"""SiLU-and-mul, the gated activation of Llama-family MLPs on a fused gate/up projection.

    x [..., 2 * I] (gate then up)  ->  silu(gate) * up  [..., I]

Grid (rows, cdiv(I, BLOCK)): elementwise and bandwidth-bound, so each program streams one
BLOCK-wide slice of one row. Numerics follow torch's, as `silu_and_mul_ref` (what the engine's
SiluAndMul layer runs on kernel_backend='torch') computes them: silu(gate) in fp32, rounded to
the activation dtype before the product.
"""
from __future__ import annotations

import torch

from kernels.utils import next_power_of_2, tl, triton


@triton.jit
def silu_and_mul_kernel(
    x_ptr, out_ptr,
    stride_x, stride_o,
    inter_size,                                 # I: width of the output row
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter_size
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter_size + cols, mask=mask, other=0.0)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty)   # [BLOCK]
    out = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., 2I] -> [..., I]; `out` may be a preallocated [..., I] buffer."""
    inter_size = x.shape[-1] // 2
    assert x.shape[-1] == 2 * inter_size, x.shape
    x2 = x.reshape(-1, 2 * inter_size)                                   # [T, 2I]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if out is None:
        out = torch.empty(x.shape[:-1] + (inter_size,), dtype=x.dtype, device=x.device)
    out2 = out.view(-1, inter_size)                                      # [T, I]
    if x2.shape[0] > 0 and inter_size > 0:
        block = min(1024, next_power_of_2(inter_size))
        silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter_size, block))](
            x2, out2, x2.stride(0), out2.stride(0), inter_size,
            BLOCK=block, num_warps=4,
        )
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Pure-torch twin of `silu_and_mul`, and the engine's activation on kernel_backend='torch'."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
