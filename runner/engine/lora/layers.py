"""LoRA-wrapped linear layers: the base layer's output plus, for each token that has an
adapter, scale * (x @ A[slot].T) @ B[slot].T.

    LoRALinear(base, part_sizes, max_loras, max_rank, state)
      lora_a [S, P * R, K]   the P parts' A matrices stacked (one shrink for a fused layer)
      lora_b [S, N, R]       B of every part in its output columns, scaled (scaling folded in)
      forward(x [T, K]) -> base(x) [T, N] + the adapters' delta, in place

S = max_loras slots and R = max_lora_rank: the tensors have fixed shapes and addresses, so
CUDA graphs captured over them stay valid while `set_slot` copies another adapter in. An
adapter of a lower rank fills the first r rows of A and columns of B (the rest are zeros).

Which slot each token uses is the step's `LoRABatch` (runner/engine/lora/batch.py), read from
`LoRAState.batch`, which the model's LoRA manager sets before each forward (None: no token has
an adapter, the base layer alone). The shrink and expand run the Triton kernels
(kernels/lora_shrink.py, kernels/lora_expand.py) with use_triton, else their torch twins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class LoRAState:
    """Shared by every LoRALinear of a model; owned by its LoRAManager."""
    use_triton: bool = False
    batch: Optional[object] = None      # the step's LoRABatch


def part_sizes(layer) -> list[int]:
    """The output columns of each part of a (fused) linear layer, this rank's."""
    from runner.engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
    if isinstance(layer, QKVParallelLinear):
        q, kv = layer.num_heads * layer.head_dim, layer.num_kv_heads * layer.head_dim
        return [q, kv, kv]
    if isinstance(layer, MergedColumnParallelLinear):
        return [s // layer.tp_size for s in layer.output_sizes]
    return [layer.output_size]


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, sizes: list[int], max_loras: int, max_rank: int,
                 state: LoRAState, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.base_layer = base
        self.part_sizes = list(sizes)
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.max_rank = max_rank
        self.state = state
        k, n = base.input_size, sum(sizes)
        self.register_buffer("lora_a", torch.zeros(max_loras, len(sizes) * max_rank, k,
                                                   dtype=dtype, device=device), persistent=False)
        self.register_buffer("lora_b", torch.zeros(max_loras, n, max_rank, dtype=dtype,
                                                   device=device), persistent=False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:     # the base layer's attributes (input_size, num_heads, ...)
            return getattr(super().__getattr__("base_layer"), name)

    def set_slot(self, slot: int, parts: Optional[list], scaling: float) -> None:
        """Put one adapter's parts ((A [r, K], B [n_i, r]) or None each) in `slot`, in place;
        parts None empties the slot for this layer."""
        a, b, rmax = self.lora_a[slot], self.lora_b[slot], self.max_rank
        a.zero_()
        b.zero_()
        for i, ab in enumerate(parts or []):
            if ab is None:
                continue
            la, lb = ab
            r = la.shape[0]
            a[i * rmax:i * rmax + r].copy_(la)
            off, n = self.offsets[i], self.part_sizes[i]
            b[off:off + n, :r].copy_(lb.to(torch.float32) * scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)                                        # [T, N]
        batch = self.state.batch
        if batch is None:
            return y
        if self.state.use_triton:
            from kernels.lora_expand import lora_expand as expand
            from kernels.lora_shrink import lora_shrink as shrink
        else:
            from kernels.lora_expand import lora_expand_ref as expand
            from kernels.lora_shrink import lora_shrink_ref as shrink
        seg = batch.segments(x.shape[0])
        x2 = x.reshape(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        s = shrink(x2, self.lora_a, *seg)                             # [T, P R] float32
        rmax = self.max_rank
        for i, (off, n) in enumerate(zip(self.offsets, self.part_sizes)):
            expand(y2, s[:, i * rmax:(i + 1) * rmax], self.lora_b[:, off:off + n], *seg,
                   col_offset=off)
        return y
