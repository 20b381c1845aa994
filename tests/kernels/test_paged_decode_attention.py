"""paged_decode_attention (Triton) against its torch twin (also the engine's torch backend).

CPU runs (Triton interpreter) use small, irregular shapes: context lengths off block
boundaries, block sizes 4-32, GQA ratios 1/2/4, head_dim 64, 80 and 128, split counts that are and
are not powers of two, sliding windows, a padding row with seq_len 0. The gpu-marked tests
add Llama-3-8B-sized heads, long contexts over many splits and CUDA-graph replay.
"""
from __future__ import annotations

import pytest
import torch

from kernels.paged_decode_attention import paged_decode_attention, paged_decode_attention_ref
from kernels.utils import pick_num_splits
from tests.kernels.paged_utils import (ATTN_TOL, DEVICE, DTYPES, FP8_DTYPES, assert_close,
                                       make_block_tables, make_kv_cache)


def _run_case(dtype, num_heads, num_kv_heads, head_dim, block_size, seq_lens, num_splits,
              sliding_window=None, seed=0, max_seq_len=None, cache_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    tables, num_blocks = make_block_tables(seq_lens, block_size, gen)
    cache = make_kv_cache(num_blocks, block_size, num_kv_heads, head_dim, cache_dtype or dtype,
                          gen)
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=gen).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim ** -0.5

    out = paged_decode_attention(q, cache, tables, lens, scale, sliding_window=sliding_window,
                                 num_splits=num_splits, max_seq_len=max_seq_len)
    assert out.shape == q.shape and out.dtype == dtype
    ref = paged_decode_attention_ref(q, cache, tables, lens, scale, sliding_window)
    assert_close(out, ref, ATTN_TOL, dtype)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_heads,num_kv_heads,block_size,num_splits", [
    (4, 4, 16, 1),       # MHA (group 1 padded to 16 rows), one program per head
    (4, 2, 8, 3),        # GQA 2, split count that is not a power of two
    (8, 2, 4, 2),        # GQA 4, tiny blocks: a 16-key tile spans four cache blocks
], ids=["g1-bs16-s1", "g2-bs8-s3", "g4-bs4-s2"])
def test_decode_matches_references(dtype, num_heads, num_kv_heads, block_size, num_splits):
    _run_case(dtype, num_heads, num_kv_heads, 64, block_size, [1, 17, 50], num_splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_decode_head_dim_128_block_32(dtype):
    _run_case(dtype, 8, 2, 128, 32, [3, 71], num_splits=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_head_dim_80_masks_padded_columns(dtype):
    # 80 pads to a 128-wide tile: columns 80..127 of each cache row are NaN here (a view with a
    # wider head stride), and only the column mask keeps them out of the dots
    gen = torch.Generator().manual_seed(3)
    seq_lens = [9, 40]
    tables, num_blocks = make_block_tables(seq_lens, 16, gen)
    wide = torch.full((2, num_blocks, 16, 2, 128), float("nan"))
    wide[..., :80] = torch.randn(2, num_blocks, 16, 2, 80, generator=gen)
    cache = wide.to(DEVICE, dtype)[..., :80]
    q = torch.randn(2, 4, 80, generator=gen).to(DEVICE, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, cache, tables, lens, 80 ** -0.5, num_splits=1)
    assert torch.isfinite(out).all()
    ref = paged_decode_attention_ref(q, cache.contiguous(), tables, lens, 80 ** -0.5)
    assert_close(out, ref, ATTN_TOL, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_sliding_window(dtype, num_splits):
    # window 10 cuts inside a tile and across a block boundary; the short row is all visible
    _run_case(dtype, 4, 2, 64, 8, [5, 40, 23], num_splits, sliding_window=10)


@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_over_fp8_cache(dtype, cache_dtype):
    # kv_cache_dtype='fp8*': the kernel widens each K/V tile to the query's dtype; the
    # references widen the same stored bytes to fp32, so the tolerance is the query dtype's
    _run_case(dtype, 8, 2, 64, 8, [1, 29, 70], 2, cache_dtype=cache_dtype)


def test_decode_long_context_many_splits():
    # 8 splits of a 300-key context; the short row leaves most of its splits empty
    _run_case(torch.float16, 8, 2, 64, 16, [300, 17], num_splits=8)


def test_decode_auto_splits_from_max_seq_len():
    # num_splits=None: picked from the static max_seq_len, never from seq_lens' values
    expected = pick_num_splits(1, 2, 600, torch.device(DEVICE))
    assert expected > 1                 # the case must actually split
    _run_case(torch.float32, 4, 2, 64, 16, [600], num_splits=None, max_seq_len=600)


def test_decode_padding_row_is_zero_not_nan():
    # CUDA-graph padding rows have seq_len 0 and a zero block table
    gen = torch.Generator().manual_seed(1)
    tables, num_blocks = make_block_tables([20, 1], 8, gen)
    tables[1].zero_()
    cache = make_kv_cache(num_blocks, 8, 2, 64, torch.float16, gen)
    q = torch.randn(2, 4, 64, generator=gen).to(DEVICE, torch.float16)
    for splits in (1, 2):
        lens = torch.tensor([20, 0], dtype=torch.int32, device=DEVICE)
        out = paged_decode_attention(q, cache, tables, lens, 0.125, num_splits=splits)
        assert torch.isfinite(out).all()
        assert (out[1] == 0).all()
        ref = paged_decode_attention_ref(q[:1], cache, tables[:1], lens[:1], 0.125)
        assert_close(out[:1], ref, ATTN_TOL, torch.float16)


def test_decode_strided_query_and_int64_tables():
    # q as a row view of a fused qkv projection; int64 block tables like the engine's
    gen = torch.Generator().manual_seed(2)
    seq_lens = [9, 33]
    tables, num_blocks = make_block_tables(seq_lens, 8, gen, dtype=torch.int64)
    cache = make_kv_cache(num_blocks, 8, 2, 64, torch.float32, gen)
    qkv = torch.randn(2, (4 + 2 * 2) * 64, generator=gen).to(DEVICE)
    q = qkv[:, :4 * 64].view(2, 4, 64)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, cache, tables, lens, 0.125, num_splits=2)
    ref = paged_decode_attention_ref(q, cache, tables, lens, 0.125)
    assert_close(out, ref, ATTN_TOL, torch.float32)


# ---- GPU: real shapes (skipped without CUDA) ----

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_splits", [None, 1, 16])
@pytest.mark.parametrize("sliding_window", [None, 1000])
def test_decode_gpu_llama3_8b_heads(dtype, num_splits, sliding_window):
    seq_lens = [1, 15, 16, 17, 255, 1000, 3001, 4097]
    _run_case(dtype, 32, 8, 128, 16, seq_lens, num_splits, sliding_window=sliding_window)


@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("num_splits", [None, 1])
def test_decode_gpu_fp8_cache(cache_dtype, num_splits):
    _run_case(torch.bfloat16, 40, 40, 128, 16, [1, 17, 255, 1000, 3001], num_splits,
              cache_dtype=cache_dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", [
    (40, 40, 128, 16), (32, 4, 128, 32), (16, 16, 64, 16), (28, 4, 128, 8)])
def test_decode_gpu_shapes(num_heads, num_kv_heads, head_dim, block_size):
    _run_case(torch.bfloat16, num_heads, num_kv_heads, head_dim, block_size,
              [7, 129, 2048, 513] * 4, None)


@pytest.mark.gpu
def test_decode_gpu_cuda_graph_replay():
    """Captured once with static buffers; replayed after seq_lens and tables change on device."""
    gen = torch.Generator().manual_seed(3)
    dtype, block_size, batch = torch.bfloat16, 16, 4
    max_len = 2048
    tables, num_blocks = make_block_tables([max_len] * batch, block_size, gen)
    cache = make_kv_cache(num_blocks, block_size, 8, 128, dtype, gen)
    q = torch.randn(batch, 32, 128, generator=gen).to(DEVICE, dtype)
    lens = torch.full((batch,), 5, dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)

    def step():
        paged_decode_attention(q, cache, tables, lens, 128 ** -0.5, max_seq_len=max_len, out=out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()                              # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for new_lens in ([1, 17, 300, 2048], [2047, 16, 1000, 33]):
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        q.copy_(torch.randn(q.shape, generator=gen).to(DEVICE, dtype))
        graph.replay()
        torch.cuda.synchronize()
        ref = paged_decode_attention_ref(q, cache, tables, lens, 128 ** -0.5)
        assert_close(out, ref, ATTN_TOL, dtype)
