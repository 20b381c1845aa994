"""int4 dequant-GEMM (Triton) against its torch twin, and the layout helpers: pack / unpack
round trip, dequantization = (q - zero) * scale by group; the kernel with group sizes that hold
whole K tiles (the tile-scale path) and smaller ones (per-row scales), act order (g_idx and a
row permutation), K not a multiple of the tile, bias, every dtype."""
from __future__ import annotations

import pytest
import torch

from kernels.int4_gemm import (dequantize_int4_ref, int4_gemm, int4_gemm_ref, pack_int4,
                               unpack_int4)
from tests.kernels.paged_utils import ATTN_TOL, DEVICE, DTYPES, assert_close


def int4_operands(m, n, k, group, dtype, act_order=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    groups = -(-k // group)
    scales = (torch.rand(groups, n, generator=gen) * 0.2 / k ** 0.5).to(DEVICE, dtype)
    zeros = torch.randint(0, 16, (groups, n), generator=gen).to(DEVICE, dtype)
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    g_idx = perm = None
    if act_order:
        g_idx = (torch.randperm(k, generator=gen) // group).to(DEVICE, torch.int32)
        perm = torch.randperm(k, generator=gen).to(DEVICE, torch.int32)
    return x, pack_int4(q).to(DEVICE), scales, zeros, g_idx, perm, q


def test_pack_unpack_and_dequantize():
    _, qw, s, z, g_idx, _, q = int4_operands(1, 24, 64, 16, torch.float32, act_order=True)
    assert qw.shape == (8, 24) and qw.dtype == torch.int32
    assert torch.equal(unpack_int4(qw).cpu(), q.int())
    # nibble j of word (r, n) is row 8r + j
    assert ((qw[0, 5].item() >> 12) & 0xF) == q[3, 5].item()
    w = dequantize_int4_ref(qw, s, z, 16, g_idx)
    g = g_idx.long()
    assert torch.equal(w, (q.to(DEVICE).float() - z.float()[g]) * s.float()[g])
    w_plain = dequantize_int4_ref(qw, s, z, 16)
    rows = torch.arange(64, device=DEVICE) // 16
    assert torch.equal(w_plain, (q.to(DEVICE).float() - z.float()[rows]) * s.float()[rows])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m, n, k, group", [
    (3, 40, 256, 128),      # tiles inside one group: tile-scale path
    (17, 24, 200, 40),      # groups smaller than a tile, K off the tile
    (5, 16, 64, 64),        # K smaller than a tile
], ids=str)
def test_int4_gemm_matches_ref(dtype, m, n, k, group):
    x, qw, s, z, _, _, _ = int4_operands(m, n, k, group, dtype)
    bias = torch.randn(n, device=DEVICE).to(dtype)
    for b in (None, bias):
        out = int4_gemm(x, qw, s, z, group, bias=b)
        assert out.shape == (m, n) and out.dtype == dtype
        assert_close(out, int4_gemm_ref(x, qw, s, z, group, bias=b), ATTN_TOL, dtype,
                     loosen=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int4_gemm_act_order(dtype):
    x, qw, s, z, g_idx, perm, _ = int4_operands(6, 32, 256, 64, dtype, act_order=True, seed=1)
    out = int4_gemm(x, qw, s, z, 64, g_idx, perm)
    assert_close(out, int4_gemm_ref(x, qw, s, z, 64, g_idx, perm), ATTN_TOL, dtype, loosen=2.0)
    # perm gathers x's columns: the same as permuting x first
    want = int4_gemm_ref(x[:, perm.long()].contiguous(), qw, s, z, 64, g_idx)
    torch.testing.assert_close(int4_gemm_ref(x, qw, s, z, 64, g_idx, perm), want)


def test_ref_is_dequantize_then_matmul():
    x, qw, s, z, _, _, _ = int4_operands(4, 16, 128, 32, torch.float32)
    want = x @ dequantize_int4_ref(qw, s, z, 32)
    torch.testing.assert_close(int4_gemm_ref(x, qw, s, z, 32), want)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [16, 100, 512])
@pytest.mark.parametrize("act_order", [False, True])
def test_gpu_int4_gemm_llama_shapes(m, act_order):
    x, qw, s, z, g_idx, perm, _ = int4_operands(m, 1024, 4096, 128, torch.bfloat16, act_order)
    out = int4_gemm(x, qw, s, z, 128, g_idx, perm)
    assert_close(out, int4_gemm_ref(x, qw, s, z, 128, g_idx, perm), ATTN_TOL, torch.bfloat16,
                 loosen=2.0)
