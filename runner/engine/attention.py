"""Attention over the paged KV cache: the metadata of one step and the torch reference backend.

The model runner flattens a step's sequences into one token batch; `AttentionMetadata` says
where each sequence's query tokens start (`query_start_loc`), how long its context is after this
step (`seq_lens`), which cache blocks hold its keys and values (`block_tables`) and into which
cache slot each new token's key and value go (`slot_mapping`).

The cache holds the model's dtype or, with kv_cache_dtype='fp8' / 'fp8_e4m3' / 'fp8_e5m2', one
byte per entry (stored unscaled, saturating; read back widened to the query's dtype). The torch
backend writes the new keys and values by slot, then attends each query token to its
sequence's cached context: decode tokens (one query each) in one batched, masked pass; prefill
chunks (several queries, causal with an offset for the cached prefix) one sequence at a time.
It is the reference the Triton kernels are compared with, and it runs on CPU.

With use_triton the layer runs kernels/: reshape_and_cache, then paged_decode_attention for a
batch of decode tokens only (the CUDA-graph case: no value is read back on the host) or
prefill_attention for any batch with prefill chunks (it handles one-token queries too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor        # [T] int64: cache slot of each new token (< 0: skip)
    query_start_loc: list[int]        # [B+1]: sequence b's queries are rows [qs[b], qs[b+1])
    seq_lens: list[int]               # [B]: context length of sequence b after this step
    block_tables: torch.Tensor        # [B, max_blocks] int32, padded with 0
    max_query_len: int = 1
    max_seq_len: int = 1
    decode_only: bool = False         # every sequence has exactly one query token
    num_splits: Optional[int] = None  # decode kernel's KV-length partitions (None: kernel picks)
    query_start_loc_t: Optional[torch.Tensor] = None    # [B+1] int32 on the device
    seq_lens_t: Optional[torch.Tensor] = None           # [B] int32 on the device
    decode_idx: Optional[torch.Tensor] = None   # [Bd] sequences with exactly one query token
    prefill_idx: tuple[int, ...] = ()           # sequences with several query tokens
    decode_seq_lens: Optional[torch.Tensor] = None   # [Bd] on device
    decode_query_rows: Optional[torch.Tensor] = None  # [Bd] row of each decode query


def write_kv_cache_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """k, v [T, Hk, D] -> kv_cache [2, num_blocks, block_size, Hk, D] at flat slots (an fp8
    cache saturates as the Triton kernel does)."""
    num_blocks, block_size, hk, d = kv_cache.shape[1:]
    kv_cache[0].view(num_blocks * block_size, hk, d)[slot_mapping] = to_cache_dtype(
        k, kv_cache.dtype)
    kv_cache[1].view(num_blocks * block_size, hk, d)[slot_mapping] = to_cache_dtype(
        v, kv_cache.dtype)


def to_cache_dtype(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """x in the cache's dtype; into fp8 through fp32, saturating at its largest finite value."""
    if cache_dtype.itemsize == 1:
        limit = torch.finfo(cache_dtype).max
        x = x.float().clamp(-limit, limit)
    return x.to(cache_dtype)


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """cache [num_blocks, bs, Hk, D], block_table [nb] -> [length, Hk, D]."""
    bs = cache.shape[1]
    nb = -(-length // bs)
    return cache[block_table[:nb]].flatten(0, 1)[:length]


def paged_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                        scale: float, sliding_window: Optional[int] = None) -> torch.Tensor:
    """q [T, Hq, D] -> out [T, Hq, D], attending over the cached context of each sequence."""
    out = torch.empty_like(q)
    hq, d = q.shape[1], q.shape[2]
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    hk = k_cache.shape[2]
    group = hq // hk

    if meta.decode_idx is not None and meta.decode_idx.numel():
        rows = meta.decode_query_rows
        tables = meta.block_tables[meta.decode_idx].long()             # [Bd, MB]
        k = k_cache[tables].flatten(1, 2)                               # [Bd, MB*bs, Hk, D]
        v = v_cache[tables].flatten(1, 2)
        qd = q[rows].view(-1, hk, group, d).float()                     # [Bd, Hk, G, D]
        scores = torch.einsum("bkgd,bskd->bkgs", qd, k.float()) * scale
        pos = torch.arange(k.shape[1], device=q.device)
        lens = meta.decode_seq_lens.view(-1, 1)
        mask = pos.view(1, -1) >= lens                                  # [Bd, S]
        if sliding_window is not None:
            mask |= pos.view(1, -1) < lens - sliding_window
        scores.masked_fill_(mask[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)
        # slots past a sequence's length may never have been written (uninitialized cache):
        # zero them, since a zero probability times NaN would still be NaN
        v = v.float().masked_fill_(mask[:, :, None, None], 0.0)
        od = torch.einsum("bkgs,bskd->bkgd", probs, v)
        out[rows] = od.reshape(-1, hq, d).to(q.dtype)

    qs = meta.query_start_loc
    for b in meta.prefill_idx:
        start, end = qs[b], qs[b + 1]
        qlen, ctx = end - start, meta.seq_lens[b]
        table = meta.block_tables[b].long()
        k = _gather_context(k_cache, table, ctx).to(q.dtype)             # [ctx, Hk, D]
        v = _gather_context(v_cache, table, ctx).to(q.dtype)
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)            # [Hq, ctx, D]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)
        qpos = torch.arange(ctx - qlen, ctx, device=q.device).view(-1, 1)
        kpos = torch.arange(ctx, device=q.device).view(1, -1)
        allowed = kpos <= qpos                                           # [qlen, ctx]
        if sliding_window is not None:
            allowed &= kpos > qpos - sliding_window
        o = F.scaled_dot_product_attention(q[start:end].transpose(0, 1), k, v,
                                           attn_mask=allowed, scale=scale)
        out[start:end] = o.transpose(0, 1)
    return out


class Attention(nn.Module):
    """Paged attention of one layer; the model runner owns the cache tensor it is given."""

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 sliding_window: Optional[int] = None, use_triton: bool = False):
        super().__init__()
        self.use_triton = use_triton
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q [T, Hq*D], k/v [T, Hk*D] -> [T, Hq*D]; writes k, v into kv_cache first."""
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.use_triton:
            out = self._forward_triton(q, k, v, kv_cache, meta)
        else:
            write_kv_cache_ref(k, v, kv_cache, meta.slot_mapping)
            out = paged_attention_ref(q, kv_cache, meta, self.scale, self.sliding_window)
        return out.view(-1, self.num_heads * self.head_dim)

    def _forward_triton(self, q, k, v, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        from kernels.paged_decode_attention import paged_decode_attention
        from kernels.prefill_attention import prefill_attention
        from kernels.reshape_and_cache import reshape_and_cache

        reshape_and_cache(k, v, kv_cache, meta.slot_mapping)
        if meta.decode_only:
            return paged_decode_attention(q, kv_cache, meta.block_tables, meta.seq_lens_t,
                                          self.scale, self.sliding_window,
                                          num_splits=meta.num_splits,
                                          max_seq_len=meta.max_seq_len)
        return prefill_attention(q, kv_cache, meta.query_start_loc_t, meta.seq_lens_t,
                                 meta.block_tables, self.scale, meta.max_query_len,
                                 self.sliding_window)
