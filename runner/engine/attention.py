"""Attention over the paged KV cache: the metadata of one step and the layer that runs it.

The model runner flattens a step's sequences into one token batch; `AttentionMetadata` says
where each sequence's query tokens start (`query_start_loc`), how long its context is after this
step (`seq_lens`), which cache blocks hold its keys and values (`block_tables`) and into which
cache slot each new token's key and value go (`slot_mapping`).

The cache holds the model's dtype or, with kv_cache_dtype='fp8' / 'fp8_e4m3' / 'fp8_e5m2', one
byte per entry (stored unscaled, saturating; read back widened to the query's dtype).

Each op is one file of kernels/, and the layer runs either its Triton kernel (use_triton) or
its torch twin `*_ref` from the same file; there is no second torch copy here. First the new
keys and values go into their cache slots (reshape_and_cache; slots < 0 are padding and are
skipped), then:
- use_triton: paged_decode_attention for a batch of decode tokens only (the CUDA-graph case: no
  value is read back on the host); a mixed batch splits: its one-token rows through
  paged_decode_attention, its prefill chunks through prefill_attention (seq_idx); a batch of
  prefill chunks only through prefill_attention;
- torch: the decode tokens of the batch (one query each) in one batched, masked pass of
  paged_decode_attention_ref, then each prefill chunk (several queries, causal with an offset
  for the cached prefix) through prefill_attention_ref. Runs on CPU, and is what the engine's
  HF parity tests check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from kernels.paged_decode_attention import paged_decode_attention, paged_decode_attention_ref
from kernels.prefill_attention import prefill_attention, prefill_attention_ref
from kernels.reshape_and_cache import reshape_and_cache, reshape_and_cache_ref


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
    prefill_idx_t: Optional[torch.Tensor] = None     # [Bp] int32: a mixed step's prefill chunks


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
            out = self._forward_ref(q, k, v, kv_cache, meta)
        return out.view(-1, self.num_heads * self.head_dim)

    def _forward_triton(self, q, k, v, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        reshape_and_cache(k, v, kv_cache, meta.slot_mapping)
        if meta.decode_only:
            return paged_decode_attention(q, kv_cache, meta.block_tables, meta.seq_lens_t,
                                          self.scale, self.sliding_window,
                                          num_splits=meta.num_splits,
                                          max_seq_len=meta.max_seq_len)
        out = None
        if meta.prefill_idx_t is not None:
            # a mixed step: the one-token rows through the decode kernel (each KV head read
            # once for its GQA group), the prefill chunks alone through the prefill kernel
            rows = meta.decode_query_rows
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            out[rows] = paged_decode_attention(q[rows], kv_cache,
                                               meta.block_tables[meta.decode_idx],
                                               meta.decode_seq_lens, self.scale,
                                               self.sliding_window, max_seq_len=meta.max_seq_len)
        return prefill_attention(q, kv_cache, meta.query_start_loc_t, meta.seq_lens_t,
                                 meta.block_tables, self.scale, meta.max_query_len,
                                 self.sliding_window, out=out, seq_idx=meta.prefill_idx_t)

    def _forward_ref(self, q, k, v, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        """The torch backend: the kernels' twins, decode rows batched (decode_idx) and prefill
        chunks one sequence at a time (prefill_idx), as the model runner split them."""
        reshape_and_cache_ref(k, v, kv_cache, meta.slot_mapping)
        out = torch.empty_like(q)                                        # [T, Hq, D]
        if meta.decode_idx is not None and meta.decode_idx.numel():
            rows = meta.decode_query_rows                                # [Bd]
            out[rows] = paged_decode_attention_ref(
                q[rows], kv_cache, meta.block_tables[meta.decode_idx], meta.decode_seq_lens,
                self.scale, self.sliding_window)
        qs = meta.query_start_loc
        for b in meta.prefill_idx:
            start, end = qs[b], qs[b + 1]
            out[start:end] = prefill_attention_ref(
                q[start:end], kv_cache, [0, end - start], [meta.seq_lens[b]],
                meta.block_tables[b:b + 1], self.scale, self.sliding_window)
        return out
