"""Rotary position embedding, neox / rotate-half layout, applied in place to q and k.

    positions      [T] int64             position of each token of the flat batch
    q              [T, Hq, D]            rotated in place (row views of a fused qkv are fine)
    k              [T, Hk, D]            rotated in place
    cos_sin_cache  [max_pos, rotary_dim] = cat(cos, sin), built by
                   runner/engine/layers/rotary_embedding.py (rope scaling, e.g. Llama-3, is
                   already folded into the table)

Only the first rotary_dim features of a head rotate (partial rotary); the rest pass through
untouched. One program per token gathers its cos/sin row once and rotates all q and k heads,
in fp32, rounding back to the activation dtype like the torch reference.
"""
from __future__ import annotations

import torch

from kernels.utils import next_power_of_2, tl, triton


@triton.jit
def _rotate_heads(base_ptr, stride_head, num_heads, cos, sin, r, r_mask, half,
                  BLOCK_H: tl.constexpr):
    """x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin on [num_heads, rotary_dim] at base_ptr."""
    heads = tl.arange(0, BLOCK_H)
    mask = (heads[:, None] < num_heads) & r_mask[None, :]
    ptr1 = base_ptr + heads[:, None] * stride_head + r[None, :]        # [BLOCK_H, BLOCK_R]
    x1 = tl.load(ptr1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr1 + half, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(ptr1, o1.to(base_ptr.dtype.element_ty), mask=mask)
    tl.store(ptr1 + half, o2.to(base_ptr.dtype.element_ty), mask=mask)


# positions may be a slice at any offset: no alignment variants (one scalar load a program)
@triton.jit(do_not_specialize_on_alignment=["positions_ptr"])
def rotary_embedding_kernel(
    positions_ptr, q_ptr, k_ptr, cos_sin_ptr,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_cs,
    num_q_heads, num_kv_heads, half,            # half = rotary_dim // 2
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,                      # half padded to a power of two
):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    r = tl.arange(0, BLOCK_R)
    r_mask = r < half
    cos = tl.load(cos_sin_ptr + pos * stride_cs + r, mask=r_mask, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + half + r, mask=r_mask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + tok * stride_q_tok, stride_q_head, num_q_heads, cos, sin, r, r_mask,
                  half, BLOCK_HQ)
    _rotate_heads(k_ptr + tok * stride_k_tok, stride_k_head, num_kv_heads, cos, sin, r, r_mask,
                  half, BLOCK_HK)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin_cache: torch.Tensor, rotary_dim: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [T, Hq, D] and k [T, Hk, D] in place at `positions` [T]; returns (q, k)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert k.shape[0] == num_tokens and k.shape[2] == head_dim, (q.shape, k.shape)
    assert rotary_dim % 2 == 0 and rotary_dim <= head_dim, (rotary_dim, head_dim)
    assert cos_sin_cache.shape[-1] == rotary_dim, (cos_sin_cache.shape, rotary_dim)
    # in place: a copy would silently drop the rotation, so insist on unit feature stride
    assert q.stride(-1) == 1 and k.stride(-1) == 1, "q and k need a contiguous head_dim axis"
    if num_tokens == 0:
        return q, k
    cos_sin_cache = cos_sin_cache.contiguous()
    half = rotary_dim // 2
    block_hq = next_power_of_2(num_q_heads)
    block_r = next_power_of_2(half)
    rotary_embedding_kernel[(num_tokens,)](
        positions, q, k, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        num_q_heads, num_kv_heads, half,
        BLOCK_HQ=block_hq,
        BLOCK_HK=next_power_of_2(num_kv_heads),
        BLOCK_R=block_r,
        num_warps=4 if block_hq * block_r <= 2048 else 8,
    )
    return q, k


def rotary_embedding_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         cos_sin_cache: torch.Tensor, rotary_dim: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch twin of `rotary_embedding` (also in place, also returns (q, k)), and the
    engine's rotary embedding on kernel_backend='torch'."""
    cos, sin = cos_sin_cache[positions].float().chunk(2, dim=-1)       # [T, rotary_dim/2]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    for x in (q, k):
        x1, x2 = x[..., :rotary_dim].float().chunk(2, dim=-1)
        x[..., :rotary_dim] = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                                        dim=-1).to(x.dtype)
    return q, k
