"""prefill_attention (Triton) against its torch twin (also the engine's torch backend).

Variable-length batches mixing fresh prompts, chunks over a cached prefix (chunked prefill)
and single-token rows; context lengths off block boundaries, block sizes 4-32, GQA 1/2/4,
head_dim 64 and 128, sliding windows. One test writes the chunk's keys and values with
reshape_and_cache first, as the engine does. gpu-marked tests use real head counts and
thousands of tokens.
"""
from __future__ import annotations

import pytest
import torch

from kernels.prefill_attention import prefill_attention, prefill_attention_ref
from kernels.reshape_and_cache import reshape_and_cache
from runner.engine.attention import Attention
from tests.kernels.paged_utils import (ATTN_TOL, DEVICE, DTYPES, FP8_DTYPES, assert_close,
                                       make_block_tables, make_kv_cache, runner_meta)


def _batch(query_lens, prefix_lens, block_size, num_kv_heads, head_dim, dtype, gen):
    seq_lens = [q + p for q, p in zip(query_lens, prefix_lens)]
    tables, num_blocks = make_block_tables(seq_lens, block_size, gen)
    cache = make_kv_cache(num_blocks, block_size, num_kv_heads, head_dim, dtype, gen)
    qsl = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    return seq_lens, tables, cache, qsl.to(DEVICE)


def _run_case(dtype, num_heads, num_kv_heads, head_dim, block_size, query_lens, prefix_lens,
              sliding_window=None, seed=0, cache_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    seq_lens, tables, cache, qsl = _batch(query_lens, prefix_lens, block_size, num_kv_heads,
                                          head_dim, cache_dtype or dtype, gen)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=gen).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim ** -0.5

    out = prefill_attention(q, cache, qsl, lens, tables, scale, max(query_lens),
                            sliding_window=sliding_window)
    assert out.shape == q.shape and out.dtype == dtype
    ref = prefill_attention_ref(q, cache, qsl, lens, tables, scale, sliding_window)
    # the twin is SDPA in q's dtype (the engine's torch backend numerics), so a 16-bit case
    # holds two roundings of P and PV; the tolerance is the one the engine's SDPA reference had
    assert_close(out, ref, ATTN_TOL, dtype, loosen=1.0 if dtype == torch.float32 else 2.0)


# fresh prompt / chunk over a cached prefix / one token over a prefix / chunk crossing tiles
QUERY_LENS = [5, 19, 1, 33]
PREFIX_LENS = [0, 13, 30, 7]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_heads,num_kv_heads,block_size", [
    (2, 2, 16), (4, 2, 8), (8, 2, 4)], ids=["g1-bs16", "g2-bs8", "g4-bs4"])
def test_prefill_matches_references(dtype, num_heads, num_kv_heads, block_size):
    _run_case(dtype, num_heads, num_kv_heads, 64, block_size, QUERY_LENS, PREFIX_LENS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_prefill_head_dim_128_block_32(dtype):
    _run_case(dtype, 4, 2, 128, 32, [21, 3], [40, 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [1, 7, 20])
def test_prefill_sliding_window(dtype, window):
    _run_case(dtype, 4, 2, 64, 8, [17, 30], [25, 2], sliding_window=window)


@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_over_fp8_cache(dtype, cache_dtype):
    _run_case(dtype, 4, 2, 64, 8, QUERY_LENS, PREFIX_LENS, cache_dtype=cache_dtype)


def test_prefill_head_dim_not_power_of_two():
    # head_dim 80 (e.g. some Phi/StableLM shapes): the padded feature lanes must stay masked
    _run_case(torch.float16, 4, 2, 80, 16, [9, 20], [3, 0])


@pytest.mark.parametrize("dtype,cache_dtype", [
    (torch.float32, None), (torch.float16, None), (torch.bfloat16, torch.float8_e4m3fn)],
    ids=["fp32", "fp16", "bf16-fp8"])
def test_prefill_after_cache_write_matches_engine_attention(dtype, cache_dtype):
    """The engine's order: write the chunk's k/v by slot, then attend; compared with the torch
    Attention layer doing both itself on a copy of the same cache."""
    gen = torch.Generator().manual_seed(5)
    query_lens, prefix_lens, block_size, hq, hk, d = [6, 11], [9, 0], 8, 4, 2, 64
    seq_lens, tables, cache, qsl = _batch(query_lens, prefix_lens, block_size, hk, d,
                                          cache_dtype or dtype, gen)
    slots = []
    for b, (ql, sl) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(sl - ql, sl):
            slots.append(int(tables[b, pos // block_size]) * block_size + pos % block_size)
    slot_mapping = torch.tensor(slots, dtype=torch.long, device=DEVICE)
    t = sum(query_lens)
    q = torch.randn(t, hq, d, generator=gen).to(DEVICE, dtype)
    k = torch.randn(t, hk, d, generator=gen).to(DEVICE, dtype)
    v = torch.randn(t, hk, d, generator=gen).to(DEVICE, dtype)
    engine_cache = cache.clone()

    reshape_and_cache(k, v, cache, slot_mapping)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = prefill_attention(q, cache, qsl, lens, tables, d ** -0.5, max(query_lens))

    meta = runner_meta(tables, query_lens, seq_lens, slot_mapping)
    layer = Attention(hq, d, d ** -0.5, hk)
    expected = layer(q.view(t, -1), k.view(t, -1), v.view(t, -1), engine_cache, meta)
    assert torch.equal(cache.view(torch.uint8), engine_cache.view(torch.uint8))
    assert_close(out.view(t, -1), expected, ATTN_TOL, dtype, loosen=2.0)


# ---- GPU: real shapes (skipped without CUDA) ----

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sliding_window", [None, 500])
def test_prefill_gpu_llama3_8b_heads(dtype, sliding_window):
    query_lens = [256, 1, 517, 1000, 64, 129]
    prefix_lens = [0, 700, 1024, 31, 4000, 0]
    _run_case(dtype, 32, 8, 128, 16, query_lens, prefix_lens, sliding_window)


@pytest.mark.gpu
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", [
    (40, 40, 128, 16), (16, 16, 64, 32), (28, 4, 128, 8)])
def test_prefill_gpu_shapes(num_heads, num_kv_heads, head_dim, block_size):
    _run_case(torch.bfloat16, num_heads, num_kv_heads, head_dim, block_size,
              [512, 77, 2048], [0, 300, 512])


@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=str)
def test_prefill_gpu_fp8_cache(cache_dtype):
    _run_case(torch.bfloat16, 40, 40, 128, 16, [512, 77, 2048, 1], [0, 300, 512, 999],
              cache_dtype=cache_dtype)


# ---- a mixed step: prefill chunks by seq_idx, one-token rows through the decode kernel ----

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_seq_idx_runs_only_those_sequences(dtype):
    gen = torch.Generator().manual_seed(3)
    query_lens, prefix_lens = [1, 19, 1, 33, 5], [30, 13, 8, 7, 0]
    seq_lens, tables, cache, qsl = _batch(query_lens, prefix_lens, 8, 2, 64, dtype, gen)
    q = torch.randn(sum(query_lens), 4, 64, generator=gen).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    chosen = [1, 3, 4]
    sentinel = torch.full_like(q, 7.0)
    out = prefill_attention(q, cache, qsl, lens, tables, 0.125, max(query_lens),
                            out=sentinel.clone(),
                            seq_idx=torch.tensor(chosen, dtype=torch.int32, device=DEVICE))
    ref = prefill_attention_ref(q, cache, qsl, lens, tables, 0.125, seq_idx=chosen)
    starts = qsl.tolist()
    for b in range(len(query_lens)):
        rows = slice(starts[b], starts[b + 1])
        if b in chosen:
            assert_close(out[rows], ref[rows], ATTN_TOL, dtype,
                         loosen=1.0 if dtype == torch.float32 else 2.0)
        else:                                          # left as the caller's buffer held it
            assert torch.equal(out[rows], sentinel[rows])
            assert not ref[rows].any()


def _mixed_step_case(dtype, hq, hk, d, block_size, query_lens, prefix_lens, seed=4):
    """The Triton Attention layer on a mixed step's metadata as the engine's input builder
    makes it for the kernels (one-token rows to the decode kernel, chunks by seq_idx) against
    the torch layer on the torch backend's metadata."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens, tables, cache, _ = _batch(query_lens, prefix_lens, block_size, hk, d, dtype, gen)
    t = sum(query_lens)
    q = torch.randn(t, hq * d, generator=gen).to(DEVICE, dtype)
    k = torch.randn(t, hk * d, generator=gen).to(DEVICE, dtype)
    v = torch.randn(t, hk * d, generator=gen).to(DEVICE, dtype)
    slots = []
    for b, (ql, sl) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(sl - ql, sl):
            slots.append(int(tables[b, pos // block_size]) * block_size + pos % block_size)
    slot_mapping = torch.tensor(slots, dtype=torch.long, device=DEVICE)
    meta = runner_meta(tables, query_lens, seq_lens, slot_mapping)
    fast = runner_meta(tables, query_lens, seq_lens, slot_mapping)
    fast.decode_seq_lens = fast.decode_seq_lens.to(torch.int32)
    fast.prefill_idx_t = torch.tensor(fast.prefill_idx, dtype=torch.int32, device=DEVICE)
    fast_cache = cache.clone()
    expected = Attention(hq, d, d ** -0.5, hk)(q, k, v, cache, meta)
    out = Attention(hq, d, d ** -0.5, hk, use_triton=True)(q, k, v, fast_cache, fast)
    assert torch.equal(cache.view(torch.uint8), fast_cache.view(torch.uint8))
    assert_close(out, expected, ATTN_TOL, dtype, loosen=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_step_splits_decode_rows_from_prefill_chunks(dtype):
    _mixed_step_case(dtype, 8, 2, 64, 8, [1, 19, 1, 33, 1, 5], [30, 13, 8, 7, 50, 0])


@pytest.mark.gpu
def test_mixed_step_gpu_llama3_8b_heads():
    # 300 decode rows over 1-2k contexts beside three prefill chunks, as in a shared-prefix run
    query_lens = [1] * 150 + [512] + [1] * 150 + [256, 1000]
    prefix_lens = [1024 + i for i in range(150)] + [1024] + [1500 + i for i in range(150)] + \
        [1024, 0]
    _mixed_step_case(torch.bfloat16, 32, 8, 128, 16, query_lens, prefix_lens)
