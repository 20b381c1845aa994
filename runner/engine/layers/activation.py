"""SiLU-and-mul: the gated activation of Llama-family MLPs on a fused gate/up projection.

The op lives in kernels/silu_and_mul.py: the Triton kernel with use_triton, its torch twin
`silu_and_mul_ref` otherwise (one reference, shared with the kernel's tests)."""
from __future__ import annotations

import torch
from torch import nn

from kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref


class SiluAndMul(nn.Module):
    def __init__(self, use_triton: bool = False):
        super().__init__()
        self.use_triton = use_triton

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, 2*I] (gate then up) -> [T, I]."""
        if self.use_triton:
            return silu_and_mul(x)
        return silu_and_mul_ref(x)
