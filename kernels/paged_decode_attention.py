"""Paged decode attention: one query token per sequence attends over its paged KV cache.

    q             [B, Hq, D]       the decode query of each sequence (row views allowed)
    kv_cache      [2, num_blocks, block_size, Hk, D]
    block_tables  [B, max_blocks]  int32/int64, padded
    seq_lens      [B] int32        context length including the new token (keys 0..seq_len-1)
    out           [B, Hq, D]

Grid (B, Hk, num_splits). A program owns one kv head of one sequence and all Hq // Hk query
heads that share it (the GQA group, padded to >= 16 rows so that QK^T and PV are tensor-core
tl.dot), so each K/V tile is read from HBM once per kv head. Flash-decoding: the KV length of a
sequence is cut into num_splits contiguous ranges of whole BLOCK_N tiles; each program keeps an
online softmax over its range and, when split, writes its normalised partial output and
log2-sum-exp to fp32 scratch, which `paged_decode_reduce_kernel` merges per (sequence, head).

Nothing here reads seq_lens on the host: the grid follows from B, Hk and num_splits, and
num_splits from a static max_seq_len, so the launch can be captured in a CUDA graph.
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.utils import (decode_tile_config, dot_precision, dot_upcast, fp16_dots,
                           next_power_of_2, pick_num_splits, tl, triton)

LOG2E = 1.4426950408889634


# step-varying index arguments are not specialised on (see kernels/prefill_attention.py)
@triton.jit(do_not_specialize=["stride_bt_seq"],
            do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr"])
def paged_decode_attention_kernel(
    q_ptr, kv_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale,                                   # softmax scale * log2(e): exp2 is the fast path
    stride_q_seq, stride_q_head,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_head,
    stride_bt_seq,
    stride_o_seq, stride_o_head,
    num_heads, num_queries_per_kv, sliding_window,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,                   # tokens per cache block
    BLOCK_G: tl.constexpr,                      # GQA group padded to >= 16 rows
    BLOCK_N: tl.constexpr,                      # keys per tile
    BLOCK_D: tl.constexpr,                      # HEAD_DIM padded to a power of two
    NUM_SPLITS: tl.constexpr,
    USE_SLIDING: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    FP16_DOTS: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start = 0
    if USE_SLIDING:
        # the query sits at seq_len - 1 and sees keys in (seq_len - 1 - window, seq_len - 1]
        kv_start = tl.maximum(seq_len - sliding_window, 0)
    # tiles are aligned to BLOCK_N so that a tile spans whole cache blocks
    tile_lo = (kv_start // BLOCK_N) * BLOCK_N
    num_tiles = tl.cdiv(seq_len - tile_lo, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_first = split * tiles_per_split
    tile_last = tl.minimum(tile_first + tiles_per_split, num_tiles)

    g = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, BLOCK_D)
    heads = kv_head * num_queries_per_kv + g                             # [BLOCK_G]
    g_mask = g < num_queries_per_kv
    d_mask = dims < HEAD_DIM
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_q_seq + heads[:, None] * stride_q_head
                + dims[None, :], mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)                                             # [BLOCK_G, BLOCK_D]
    elif FP16_DOTS:     # fp8 cache, bf16 query (see kernels/utils.py: fp16_dots)
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)

    # a finite floor instead of -inf keeps exp2(m_old - m_new) defined on fully masked tiles
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)

    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    k_base = kv_cache_ptr + kv_head.to(tl.int64) * stride_c_head
    v_base = k_base + stride_c_kv
    for tile in range(tile_first, tile_last):
        n = tile_lo + tile * BLOCK_N + tl.arange(0, BLOCK_N)             # [BLOCK_N] positions
        n_valid = (n >= kv_start) & (n < seq_len)
        block_id = tl.load(block_table + n // BLOCK_SIZE, mask=n < seq_len, other=0)
        offs = block_id.to(tl.int64) * stride_c_blk + (n % BLOCK_SIZE) * stride_c_tok
        kv_mask = n_valid[:, None] & d_mask[None, :]
        k = tl.load(k_base + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        # to the query's dtype: widens an fp8 cache (and, under DOT_UPCAST, bf16 to fp32)
        k = k.to(q.dtype)                                                # [BLOCK_N, BLOCK_D]
        v = v.to(q.dtype)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N]
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DOT_UPCAST:
            # round P like the bf16 GPU path does before its PV dot
            p_v = p.to(tl.bfloat16).to(tl.float32)
        else:
            p_v = p.to(v.dtype)
        acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=DOT_PRECISION)
        m_i = m_new

    # an empty range (padding sequence with seq_len 0, or a split past the end) gives zeros
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]                                            # [BLOCK_G, BLOCK_D]
    row_mask = g_mask[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + seq.to(tl.int64) * stride_o_seq + heads[:, None] * stride_o_head
                 + dims[None, :], o.to(out_ptr.dtype.element_ty), mask=row_mask)
    else:
        lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf"))  # [BLOCK_G], log2 domain
        part = (seq.to(tl.int64) * num_heads + heads) * NUM_SPLITS + split  # [BLOCK_G]
        tl.store(part_lse_ptr + part, lse, mask=g_mask)
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :], o, mask=row_mask)


@triton.jit
def paged_decode_reduce_kernel(
    out_ptr, part_out_ptr, part_lse_ptr,
    stride_o_seq, stride_o_head,
    num_heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,                   # NUM_SPLITS padded to a power of two
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, BLOCK_D)
    part = (seq * num_heads + head) * NUM_SPLITS + s                     # [SPLITS_PAD]
    lse = tl.load(part_lse_ptr + part, mask=s < NUM_SPLITS, other=float("-inf"))
    m = tl.max(lse, axis=0)
    # every split empty (padding sequence): weights 0 and the output 0, never NaN
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)                                                 # [SPLITS_PAD]
    o = tl.load(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :],
                mask=(s[:, None] < NUM_SPLITS) & (dims[None, :] < HEAD_DIM), other=0.0)
    num = tl.sum(w[:, None] * o, axis=0)                                 # [BLOCK_D]
    den = tl.sum(w, axis=0)
    out = num / tl.where(den > 0.0, den, 1.0)
    tl.store(out_ptr + seq * stride_o_seq + head * stride_o_head + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float,
                           sliding_window: Optional[int] = None,
                           num_splits: Optional[int] = None,
                           max_seq_len: Optional[int] = None,
                           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q [B, Hq, D] -> [B, Hq, D]: each sequence's query over keys 0..seq_lens[b]-1.

    max_seq_len: a static upper bound of seq_lens (host int) used only to pick num_splits;
    defaults to the capacity of block_tables, so no device value is ever read on the host.
    num_splits: KV-length partitions per sequence; None picks it from the batch and SM count.
    out: optional preallocated [B, Hq, D] output (CUDA-graph static buffers).
    """
    batch, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    assert cache_head_dim == head_dim and num_heads % num_kv_heads == 0, \
        (q.shape, kv_cache.shape)
    assert block_tables.shape[0] >= batch and seq_lens.shape[0] >= batch
    if q.stride(-1) != 1:
        q = q.contiguous()
    assert kv_cache.stride(-1) == 1 and block_tables.stride(-1) == 1
    if out is None:
        out = torch.empty((batch, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    if max_seq_len is None:
        max_seq_len = block_tables.shape[1] * block_size
    max_kv_len = min(max_seq_len, sliding_window) if sliding_window else max_seq_len
    if num_splits is None:
        num_splits = pick_num_splits(batch, num_kv_heads, max_kv_len, q.device)
    cfg = decode_tile_config(group, head_dim, q.dtype, kv_cache.dtype)
    block_d = next_power_of_2(head_dim)

    if num_splits > 1:
        part_out = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32,
                               device=q.device)
        part_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32,
                               device=q.device)
    else:
        part_out = part_lse = out     # unused by the single-split kernel variant

    paged_decode_attention_kernel[(batch, num_kv_heads, num_splits)](
        q, kv_cache, block_tables, seq_lens,
        out, part_out, part_lse,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        num_heads, group, sliding_window or 0,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_G=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=block_d,
        NUM_SPLITS=num_splits,
        USE_SLIDING=sliding_window is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        DOT_UPCAST=dot_upcast(q.dtype),
        FP16_DOTS=fp16_dots(q.dtype, kv_cache.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if num_splits > 1:
        paged_decode_reduce_kernel[(batch, num_heads)](
            out, part_out, part_lse,
            out.stride(0), out.stride(1),
            num_heads,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            NUM_SPLITS=num_splits,
            SPLITS_PAD=next_power_of_2(num_splits),
            num_warps=4 if head_dim >= 128 else 2,
        )
    return out


def paged_decode_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                               sliding_window: Optional[int] = None) -> torch.Tensor:
    """Pure-torch twin of `paged_decode_attention`, and the engine's decode attention on
    kernel_backend='torch': every sequence in one masked pass over its padded block table,
    scores, softmax and PV in fp32. A row with seq_len 0 (CUDA-graph padding) comes out 0."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    tables = block_tables.long()                                         # [B, MB]
    k = kv_cache[0][tables].flatten(1, 2)                                # [B, S = MB*bs, Hk, D]
    v = kv_cache[1][tables].flatten(1, 2)
    qg = q.reshape(batch, num_kv_heads, group, head_dim).float()         # [B, Hk, G, D]
    scores = torch.einsum("bkgd,bskd->bkgs", qg, k.float()) * scale      # [B, Hk, G, S]
    pos = torch.arange(k.shape[1], device=q.device)                      # [S]
    lens = seq_lens.to(q.device).view(-1, 1)                             # [B, 1]
    masked = pos[None, :] >= lens                                        # [B, S]
    if sliding_window is not None:
        masked |= pos[None, :] < lens - sliding_window
    scores.masked_fill_(masked[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)
    # slots past a sequence's length may never have been written (an uninitialized CPU
    # cache): zero them, since a zero probability times NaN would still be NaN
    v = v.float().masked_fill_(masked[:, :, None, None], 0.0)
    out = torch.einsum("bkgs,bskd->bkgd", probs, v).reshape(batch, num_heads, head_dim)
    # seq_len 0: all keys masked, softmax NaN; the kernel writes 0
    return out.masked_fill_(lens.view(-1, 1, 1) == 0, 0.0).to(q.dtype)
