"""int4 dequant-GEMV (Triton, decode batches) against the torch twin: 1, 2, 3 and 4 rows, the
tile-scale and per-row-scale paths, split-K with its reduce, act order, bias, every dtype; the
refusal of a batch over MAX_M; the static tile choice; and the engine's int4 layers sending
decode batches here and prefill chunks to the GEMM (CUDA)."""
from __future__ import annotations

import importlib

import pytest
import torch

from kernels.int4_gemm import int4_gemm_ref
from kernels.int4_gemv import MAX_M, gemv_tiles, int4_gemv, int4_gemv_ref
from tests.kernels.paged_utils import ATTN_TOL, DEVICE, DTYPES, assert_close
from tests.kernels.test_int4_gemm import int4_operands


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("n, k, group", [(40, 256, 64), (24, 192, 32), (16, 72, 8)], ids=str)
def test_int4_gemv_matches_ref(dtype, m, n, k, group):
    x, qw, s, z, _, _, _ = int4_operands(m, n, k, group, dtype, seed=m)
    bias = torch.randn(n, device=DEVICE).to(dtype) if m % 2 else None
    out = int4_gemv(x, qw, s, z, group, bias=bias)
    assert out.shape == (m, n) and out.dtype == dtype
    assert_close(out, int4_gemv_ref(x, qw, s, z, group, bias=bias), ATTN_TOL, dtype,
                 loosen=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int4_gemv_act_order(dtype):
    x, qw, s, z, g_idx, perm, _ = int4_operands(2, 24, 256, 64, dtype, act_order=True, seed=5)
    out = int4_gemv(x, qw, s, z, 64, g_idx, perm)
    assert_close(out, int4_gemv_ref(x, qw, s, z, 64, g_idx, perm), ATTN_TOL, dtype, loosen=2.0)


def test_split_k_is_used_and_deterministic():
    x, qw, s, z, _, _, _ = int4_operands(1, 16, 512, 64, torch.float32, seed=6)
    assert gemv_tiles(16, 512, x.device)[2] > 1              # one column block: K is split
    out = int4_gemv(x, qw, s, z, 64)
    assert torch.equal(out, int4_gemv(x, qw, s, z, 64))
    assert_close(out, int4_gemv_ref(x, qw, s, z, 64), ATTN_TOL, torch.float32)


def test_gemv_ref_is_the_gemm_ref_and_big_batches_are_refused():
    assert int4_gemv_ref is int4_gemm_ref
    x, qw, s, z, _, _, _ = int4_operands(MAX_M + 1, 16, 64, 64, torch.float32)
    with pytest.raises(ValueError, match="at most 4 rows"):
        int4_gemv(x, qw, s, z, 64)


def test_gpu_tiles_are_static(monkeypatch):
    mod = importlib.import_module("kernels.int4_gemv")
    monkeypatch.setattr(mod, "is_interpreter", lambda: False)
    monkeypatch.setattr(mod, "num_sms", lambda device: 132)
    cpu = torch.device("cpu")
    for n, k in [(4096, 14336), (28672, 4096), (6144, 4096), (128, 128)]:
        block_n, block_k, split, _ = gemv_tiles(n, k, cpu)
        assert (block_n, block_k, split) == gemv_tiles(n, k, cpu)[:3]
        assert block_k == 128 and 1 <= split <= 16 and split <= -(-k // block_k)
    # few column blocks split K more than many do
    assert gemv_tiles(4096, 14336, cpu)[2] > gemv_tiles(28672, 4096, cpu)[2]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("n, k", [(4096, 14336), (28672, 4096), (6144, 4096)], ids=str)
def test_gpu_int4_gemv_llama_shapes(m, n, k):
    x, qw, s, z, _, _, _ = int4_operands(m, n, k, 128, torch.bfloat16, seed=7)
    out = int4_gemv(x, qw, s, z, 128)
    assert_close(out, int4_gemv_ref(x, qw, s, z, 128), ATTN_TOL, torch.bfloat16, loosen=2.0)
