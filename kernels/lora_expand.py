"""LoRA expand: add each token's shrunk activations times the B matrix of its adapter's slot
to a column range of the base layer's output, in place.

    y [T, N], s [T, R] float32 (lora_shrink's), lora_b [S, n, R]  ->
    y[t, off:off+n] += s[t] @ lora_b[slot(t)].T     for the tokens that have a slot

A fused layer (q/k/v, gate/up) calls it once per part: `col_offset` is the part's first column
of y, `s` the part's columns of the shrink output (a view), `lora_b` the part's B. The tokens
are grouped by slot as for lora_shrink (`sorted_token_ids`, `num_tokens_per_slot`,
`slot_start`); rows of tokens without an adapter are not touched.

Grid (cdiv(T, BLOCK_M), cdiv(n, BLOCK_N), S), as lora_shrink's: a fixed grid for T tokens, any
mix of slots; the rank is one tile (R <= 512). `lora_expand_ref` is the torch twin.
"""
from __future__ import annotations

import torch

from kernels.utils import next_power_of_2, tl, triton


@triton.jit
def lora_expand_kernel(
    s_ptr, b_ptr, y_ptr, sorted_ptr, count_ptr, start_ptr,
    N, R, col_offset,
    stride_sm, stride_bs, stride_bn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    slot = tl.program_id(2)
    count = tl.load(count_ptr + slot)
    if pid_m * BLOCK_M >= count:
        return
    start = tl.load(start_ptr + slot)
    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs < count
    rows = tl.load(sorted_ptr + start + offs, mask=row_mask, other=0).to(tl.int64)   # [BM]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                   # [BN]
    col_mask = cols < N
    rs = tl.arange(0, BLOCK_R)
    r_mask = rs < R
    st = tl.load(s_ptr + rows[:, None] * stride_sm + rs[None, :],
                 mask=row_mask[:, None] & r_mask[None, :], other=0.0)              # [BM, BR]
    bt = tl.load(b_ptr + slot.to(tl.int64) * stride_bs + cols[None, :] * stride_bn + rs[:, None],
                 mask=col_mask[None, :] & r_mask[:, None], other=0.0)              # [BR, BN]
    if IEEE:
        delta = tl.dot(st, bt.to(tl.float32), input_precision="ieee")
    else:
        delta = tl.dot(st.to(bt.dtype), bt)
    y_ptrs = y_ptr + rows[:, None] * stride_ym + col_offset + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + delta).to(y_ptr.dtype.element_ty), mask=mask)


def lora_expand(y: torch.Tensor, s: torch.Tensor, lora_b: torch.Tensor,
                sorted_token_ids: torch.Tensor, num_tokens_per_slot: torch.Tensor,
                slot_start: torch.Tensor, col_offset: int = 0) -> torch.Tensor:
    """y [T, >= col_offset + n] += per-slot s [T, R] @ lora_b [S, n, R].T, in place; returns y."""
    T = y.shape[0]
    S, N, R = lora_b.shape
    assert s.shape == (T, R), (s.shape, lora_b.shape)
    assert y.stride(-1) == 1 and s.stride(-1) == 1 and lora_b.stride(-1) == 1
    if T == 0:
        return y
    block_m = 16 if T <= 16 else 32
    block_n = max(16, min(64, next_power_of_2(N)))
    block_r = max(16, next_power_of_2(R))
    grid = (triton.cdiv(T, block_m), triton.cdiv(N, block_n), S)
    lora_expand_kernel[grid](
        s, lora_b, y, sorted_token_ids, num_tokens_per_slot, slot_start,
        N, R, col_offset, s.stride(0), lora_b.stride(0), lora_b.stride(1), y.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, IEEE=y.dtype == torch.float32,
    )
    return y


def lora_expand_ref(y: torch.Tensor, s: torch.Tensor, lora_b: torch.Tensor,
                    sorted_token_ids: torch.Tensor, num_tokens_per_slot: torch.Tensor,
                    slot_start: torch.Tensor, col_offset: int = 0) -> torch.Tensor:
    """Pure-torch twin of `lora_expand` (the engine's path on kernel_backend='torch')."""
    n = lora_b.shape[1]
    counts, starts = num_tokens_per_slot.tolist(), slot_start.tolist()
    for slot, (count, start) in enumerate(zip(counts, starts)):
        if count:
            rows = sorted_token_ids[start:start + count].long()
            part = y[rows, col_offset:col_offset + n].float() + s[rows] @ lora_b[slot].float().T
            y[rows, col_offset:col_offset + n] = part.to(y.dtype)
    return y
