"""Context handed explicitly to model layers (no process-global state): tensor-parallel rank and
size with their all_reduce, whether layers run Triton kernels or their torch references, and the
model's quantization config (runner/engine/quantization/; None: unquantized linear layers).

With tensor_parallel_size=1 rank is 0, size is 1 and all_reduce is the identity; the layers are
already written to shard their weights by rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class ParallelContext:
    tp_rank: int = 0
    tp_size: int = 1
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity
    use_triton: bool = False      # kernels/ (Triton) instead of the torch reference ops
    quant_config: Optional[Any] = None   # a quantization.base.QuantizationConfig

    def tp_kwargs(self) -> dict:
        return {"tp_rank": self.tp_rank, "tp_size": self.tp_size}
