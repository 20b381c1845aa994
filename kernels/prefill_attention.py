"""Prefill attention over the paged KV cache for a variable-length batch (chunked prefill).

    q                [T, Hq, D]     the query tokens of all sequences, flattened (row views ok)
    kv_cache         [2, num_blocks, block_size, Hk, D], this step's k/v already written
    query_start_loc  [B+1] int32    sequence b's queries are rows [qsl[b], qsl[b+1])
    seq_lens         [B] int32      context length after this step (cached prefix + chunk)
    block_tables     [B, max_blocks] int32/int64, padded
    out              [T, Hq, D]

Query j of sequence b sits at position seq_lens[b] - qlen_b + j and sees keys 0..position
(minus those older than the sliding window). Grid (cdiv(max_query_len, BLOCK_M), B, Hq): a
program takes BLOCK_M queries of one head and streams BLOCK_N-key tiles gathered through the
block table, flash-attention style (online softmax in fp32, QK^T and PV on tl.dot). Tiles wholly
below the diagonal skip the causal mask; only the last few tiles of a program pay for it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from kernels.utils import (dot_precision, dot_upcast, fp16_dots, next_power_of_2,
                           prefill_tile_config, tl, triton)

LOG2E = 1.4426950408889634


@triton.jit
def _prefill_tile(acc, l_i, m_i, q, k_base, v_base, block_table, start, q_pos, kv_hi,
                  sliding_window, qk_scale, stride_c_blk, stride_c_tok, dims,
                  HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr, USE_SLIDING: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """One BLOCK_N-key tile of the online softmax; MASKED tiles apply causal/window/length."""
    n = start + tl.arange(0, BLOCK_N)                                    # [BLOCK_N] positions
    d_mask = dims < HEAD_DIM
    if MASKED:
        n_in = n < kv_hi
        block_id = tl.load(block_table + n // BLOCK_SIZE, mask=n_in, other=0)
        kv_mask = n_in[:, None] & d_mask[None, :]
    else:
        block_id = tl.load(block_table + n // BLOCK_SIZE)
        kv_mask = d_mask[None, :]
    offs = block_id.to(tl.int64) * stride_c_blk + (n % BLOCK_SIZE) * stride_c_tok
    k = tl.load(k_base + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    # to the query's dtype: widens an fp8 cache (and, under DOT_UPCAST, bf16 to fp32)
    k = k.to(q.dtype)                                                # [BLOCK_N, BLOCK_D]
    v = v.to(q.dtype)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
    if MASKED:
        allowed = n[None, :] <= q_pos[:, None]
        if USE_SLIDING:
            allowed = allowed & (n[None, :] > q_pos[:, None] - sliding_window)
        s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if DOT_UPCAST:
        p_v = p.to(tl.bfloat16).to(tl.float32)    # round P as the bf16 GPU path does
    else:
        p_v = p.to(v.dtype)
    acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


# Arguments that change from step to step (where the step's index tensors are sliced, how wide
# its block table is) are not specialised on: each new value would compile another variant
# in the middle of a run (seconds each). They feed scalar and gathered loads only.
@triton.jit(do_not_specialize=["stride_bt_seq"],
            do_not_specialize_on_alignment=["query_start_loc_ptr", "seq_lens_ptr",
                                            "block_tables_ptr", "seq_idx_ptr"])
def prefill_attention_kernel(
    q_ptr, kv_cache_ptr, query_start_loc_ptr, seq_lens_ptr, block_tables_ptr, out_ptr,
    seq_idx_ptr,                                # [grid 1] the sequences to run (HAS_SEQ_IDX)
    qk_scale,                                   # softmax scale * log2(e)
    stride_q_tok, stride_q_head,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_head,
    stride_bt_seq,
    stride_o_tok, stride_o_head,
    num_queries_per_kv, sliding_window,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,                   # tokens per cache block
    BLOCK_M: tl.constexpr,                      # query rows per program
    BLOCK_N: tl.constexpr,                      # keys per tile
    BLOCK_D: tl.constexpr,                      # HEAD_DIM padded to a power of two
    USE_SLIDING: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    FP16_DOTS: tl.constexpr,
    HAS_SEQ_IDX: tl.constexpr,
):
    if HAS_SEQ_IDX:
        seq = tl.load(seq_idx_ptr + tl.program_id(1))
    else:
        seq = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    # the grid is sized for max_query_len; run the diagonal-heavy (last) row blocks first
    m_block = tl.cdiv(q_len, BLOCK_M) - 1 - tl.program_id(0)
    if m_block < 0:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix = seq_len - q_len                    # keys already cached before this chunk
    kv_head = head // num_queries_per_kv

    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)                     # [BLOCK_M]
    dims = tl.arange(0, BLOCK_D)
    row_mask = rows < q_len
    q_pos = prefix + rows                                                # [BLOCK_M]
    tok = (q_start + rows).to(tl.int64)
    io_mask = row_mask[:, None] & (dims[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + tok[:, None] * stride_q_tok + head * stride_q_head + dims[None, :],
                mask=io_mask, other=0.0)                                 # [BLOCK_M, BLOCK_D]
    if DOT_UPCAST:
        q = q.to(tl.float32)
    elif FP16_DOTS:     # fp8 cache, bf16 query (see kernels/utils.py: fp16_dots)
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)

    first_pos = prefix + m_block * BLOCK_M
    kv_hi = prefix + tl.minimum(m_block * BLOCK_M + BLOCK_M, q_len)     # last row's pos + 1
    if USE_SLIDING:
        kv_lo = tl.maximum(first_pos - sliding_window + 1, 0)
        kv_lo = (kv_lo // BLOCK_N) * BLOCK_N
        full_hi = kv_lo                         # every tile needs the window mask
    else:
        kv_lo = 0
        # keys <= first_pos are visible to every row: whole tiles below need no mask
        full_hi = ((first_pos + 1) // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)   # finite: no NaN on masked tiles
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    k_base = kv_cache_ptr + kv_head.to(tl.int64) * stride_c_head
    v_base = k_base + stride_c_kv

    for start in range(kv_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, k_base, v_base, block_table, start, q_pos, kv_hi,
            sliding_window, qk_scale, stride_c_blk, stride_c_tok, dims,
            HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, USE_SLIDING, DOT_PRECISION, DOT_UPCAST)
    for start in range(full_hi, kv_hi, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, k_base, v_base, block_table, start, q_pos, kv_hi,
            sliding_window, qk_scale, stride_c_blk, stride_c_tok, dims,
            HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, USE_SLIDING, DOT_PRECISION, DOT_UPCAST)

    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]                     # [BLOCK_M, BLOCK_D]
    tl.store(out_ptr + tok[:, None] * stride_o_tok + head * stride_o_head + dims[None, :],
             o.to(out_ptr.dtype.element_ty), mask=io_mask)


def prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, query_start_loc: torch.Tensor,
                      seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                      max_query_len: int, sliding_window: Optional[int] = None,
                      out: Optional[torch.Tensor] = None,
                      seq_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q [T, Hq, D] -> [T, Hq, D], causal over each sequence's cached prefix + chunk.

    max_query_len: host int bound of the per-sequence query lengths (sizes the grid).
    out: optional preallocated [T, Hq, D] output.
    seq_idx: optional [S] int32 device tensor: run only these sequences (the rows of the others
      are left as they are in `out`); the engine passes a mixed step's prefill chunks here and
      runs its one-token decode rows through paged_decode_attention, which reads each KV head
      once for its whole GQA group instead of once per query head.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    assert cache_head_dim == head_dim and num_heads % num_kv_heads == 0, \
        (q.shape, kv_cache.shape)
    batch = seq_lens.shape[0]
    assert query_start_loc.shape[0] == batch + 1 and block_tables.shape[0] >= batch
    if q.stride(-1) != 1:
        q = q.contiguous()
    assert kv_cache.stride(-1) == 1 and block_tables.stride(-1) == 1
    if out is None:
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    if seq_idx is not None and seq_idx.numel() == 0:
        return out
    cfg = prefill_tile_config(head_dim, q.dtype)
    programs = batch if seq_idx is None else seq_idx.numel()
    grid = (triton.cdiv(max_query_len, cfg.block_m), programs, num_heads)
    prefill_attention_kernel[grid](
        q, kv_cache, query_start_loc, seq_lens, block_tables, out,
        seq_idx if seq_idx is not None else seq_lens,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        num_heads // num_kv_heads, sliding_window or 0,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=next_power_of_2(head_dim),
        USE_SLIDING=sliding_window is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        DOT_UPCAST=dot_upcast(q.dtype),
        FP16_DOTS=fp16_dots(q.dtype, kv_cache.dtype),
        HAS_SEQ_IDX=seq_idx is not None,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def prefill_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor,
                          query_start_loc: Union[torch.Tensor, Sequence[int]],
                          seq_lens: Union[torch.Tensor, Sequence[int]],
                          block_tables: torch.Tensor, scale: float,
                          sliding_window: Optional[int] = None,
                          seq_idx: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Pure-torch twin of `prefill_attention`, and the engine's prefill attention on
    kernel_backend='torch': one sequence at a time through SDPA in q's dtype (keys and values
    widened from the cache's dtype), causal with the cached prefix's offset.

    query_start_loc and seq_lens may be host lists (the engine's: no device reads per
    sequence) or tensors as the kernel takes them."""
    if isinstance(query_start_loc, torch.Tensor):
        query_start_loc = query_start_loc.tolist()
    if isinstance(seq_lens, torch.Tensor):
        seq_lens = seq_lens.tolist()
    if isinstance(seq_idx, torch.Tensor):
        seq_idx = seq_idx.tolist()
    group = q.shape[1] // kv_cache.shape[3]
    out = torch.zeros_like(q)                                            # [T, Hq, D]
    for b in (range(len(seq_lens)) if seq_idx is None else seq_idx):
        seq_len = seq_lens[b]
        start, end = query_start_loc[b], query_start_loc[b + 1]
        if end == start:
            continue
        table = block_tables[b].long()
        k = _gather_context(kv_cache[0], table, seq_len).to(q.dtype)     # [S, Hk, D]
        v = _gather_context(kv_cache[1], table, seq_len).to(q.dtype)
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)            # [Hq, S, D]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)
        q_pos = torch.arange(seq_len - (end - start), seq_len, device=q.device)  # [L]
        k_pos = torch.arange(seq_len, device=q.device)                   # [S]
        allowed = k_pos[None, :] <= q_pos[:, None]                       # [L, S]
        if sliding_window is not None:
            allowed &= k_pos[None, :] > q_pos[:, None] - sliding_window
        o = F.scaled_dot_product_attention(q[start:end].transpose(0, 1), k, v,
                                           attn_mask=allowed, scale=scale)   # [Hq, L, D]
        out[start:end] = o.transpose(0, 1)
    return out


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """cache [num_blocks, block_size, Hk, D], block_table [nb] -> the first `length` slots of
    the sequence, [length, Hk, D]."""
    num_blocks = -(-length // cache.shape[1])
    return cache[block_table[:num_blocks]].flatten(0, 1)[:length]
