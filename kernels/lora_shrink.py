"""LoRA shrink: each token's input times the A matrix of its adapter's slot, for a batch that
mixes adapters (and tokens with none).

    x [T, K], lora_a [S, R, K] (S adapter slots)  ->  out [T, R] float32,
    out[t] = x[t] @ lora_a[slot(t)].T           for the tokens that have a slot

The tokens are grouped by slot into segments (built once per step by the model runner,
runner/engine/lora/batch.py): `sorted_token_ids` lists the token rows slot by slot,
`slot_start[z]` / `num_tokens_per_slot[z]` give slot z's segment of it. Rows of tokens without
an adapter are left untouched (the expand reads only rows it has a segment for).

Grid (cdiv(T, BLOCK_M), cdiv(R, BLOCK_N), S): program (m, n, z) gathers the m-th BLOCK_M rows
of slot z's segment and multiplies them by lora_a[z]'s n-th block, looping over K; a program
past the end of its segment returns at once. The grid depends on T and S only, never on how
the tokens are split among the slots, so a CUDA graph captured for T tokens replays any mix
(the segment tensors are updated in place). `lora_shrink_ref` is the torch twin, the CPU path.
"""
from __future__ import annotations

import torch

from kernels.utils import next_power_of_2, tl, triton


@triton.jit
def lora_shrink_kernel(
    x_ptr, a_ptr, out_ptr, sorted_ptr, count_ptr, start_ptr,
    K, R,
    stride_xm, stride_as, stride_ar, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
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
    col_mask = cols < R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_base = a_ptr + slot.to(tl.int64) * stride_as
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        xt = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :],
                     mask=row_mask[:, None] & k_mask[None, :], other=0.0)          # [BM, BK]
        at = tl.load(a_base + cols[None, :] * stride_ar + ks[:, None],
                     mask=col_mask[None, :] & k_mask[:, None], other=0.0)          # [BK, BN]
        if IEEE:
            acc = tl.dot(xt, at, acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, at, acc)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc,
             mask=row_mask[:, None] & col_mask[None, :])


def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, sorted_token_ids: torch.Tensor,
                num_tokens_per_slot: torch.Tensor, slot_start: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, K], lora_a [S, R, K] -> out [T, R] float32 (rows of slot-less tokens untouched;
    `out` may be a preallocated buffer)."""
    T, K = x.shape
    S, R, K2 = lora_a.shape
    assert K2 == K, (x.shape, lora_a.shape)
    if x.stride(-1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.zeros(T, R, dtype=torch.float32, device=x.device)
    if T == 0:
        return out
    assert lora_a.stride(-1) == 1 and out.stride(-1) == 1
    block_m = 16 if T <= 16 else 32
    block_n = max(16, min(64, next_power_of_2(R)))
    block_k = max(16, min(64, next_power_of_2(K)))
    grid = (triton.cdiv(T, block_m), triton.cdiv(R, block_n), S)
    lora_shrink_kernel[grid](
        x, lora_a, out, sorted_token_ids, num_tokens_per_slot, slot_start,
        K, R, x.stride(0), lora_a.stride(0), lora_a.stride(1), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=x.dtype == torch.float32,
    )
    return out


def lora_shrink_ref(x: torch.Tensor, lora_a: torch.Tensor, sorted_token_ids: torch.Tensor,
                    num_tokens_per_slot: torch.Tensor, slot_start: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-torch twin of `lora_shrink` (the engine's path on kernel_backend='torch')."""
    T = x.shape[0]
    if out is None:
        out = torch.zeros(T, lora_a.shape[1], dtype=torch.float32, device=x.device)
    counts, starts = num_tokens_per_slot.tolist(), slot_start.tolist()
    for slot, (count, start) in enumerate(zip(counts, starts)):
        if count:
            rows = sorted_token_ids[start:start + count].long()
            out[rows] = x[rows].float() @ lora_a[slot].float().T
    return out
