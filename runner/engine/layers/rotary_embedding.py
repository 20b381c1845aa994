"""Rotary position embedding (neox / rotate-half layout) with HF's rope scaling variants.

The cos/sin table (rope scaling folded in) is built once for max_position positions; the
rotation gathers rows by position, so any mix of prefill chunks and decode tokens in one flat
batch gets the right angles. It rotates q and k in place through kernels/rotary_embedding.py:
the Triton kernel with use_triton, its torch twin `rotary_embedding_ref` otherwise.
Supported rope_type values: default, linear, llama3. Others raise NotImplementedError naming
the type.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from kernels.rotary_embedding import rotary_embedding, rotary_embedding_ref

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def _inv_freq(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float,
                 rope_scaling: Optional[dict] = None, partial_rotary_factor: float = 1.0,
                 use_triton: bool = False):
        super().__init__()
        self.use_triton = use_triton
        self.head_dim = head_dim
        self.rotary_dim = int(head_dim * partial_rotary_factor)
        inv_freq = _inv_freq(self.rotary_dim, base)
        rope_type = "default"
        if rope_scaling:
            rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
        if rope_type == "linear":
            inv_freq = inv_freq / rope_scaling["factor"]
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope_scaling)
        elif rope_type != "default":
            raise NotImplementedError(
                f"rope_scaling type {rope_type!r} is not supported; supported: "
                f"{list(SUPPORTED_ROPE_TYPES)}")
        # HF computes the angles in float32; match it so positions agree to the last bit
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq.float())                # [P, rotary_dim/2]
        self.register_buffer("cos_sin_cache", torch.cat([freqs.cos(), freqs.sin()], dim=-1),
                             persistent=False)                 # [P, rotary_dim]

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, Hq, D]; k [T, Hk, D] (row views of a fused qkv are fine) ->
        (q, k) rotated in place, in the table's float32, same dtypes."""
        rotate = rotary_embedding if self.use_triton else rotary_embedding_ref
        return rotate(positions, q, k, self.cos_sin_cache, self.rotary_dim)
