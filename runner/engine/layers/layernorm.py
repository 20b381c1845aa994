"""RMSNorm with an optional fused residual add, computed in float32 like the HF reference.

The op lives in kernels/rms_norm.py: with use_triton its kernels run (one pass, residual add
fused), otherwise their torch twins `rms_norm_ref` / `fused_add_rms_norm_ref` (one reference,
shared with the kernels' tests)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kernels.rms_norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, use_triton: bool = False):
        super().__init__()
        self.eps = eps
        self.use_triton = use_triton
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """x [T, H]; with `residual`, returns (norm(x + residual), x + residual)."""
        if residual is None:
            norm = rms_norm if self.use_triton else rms_norm_ref
            return norm(x, self.weight, self.eps)
        fused = fused_add_rms_norm if self.use_triton else fused_add_rms_norm_ref
        return fused(x, residual, self.weight, self.eps)
