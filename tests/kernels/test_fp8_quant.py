"""fp8 activation quantization (Triton) against its torch twin: per-token dynamic scales and a
static scale, irregular row lengths (one tile and several), all-zero rows, saturation, and the
round trip x ~= x_q * scale within e4m3's half-ulp."""
from __future__ import annotations

import pytest
import torch

from kernels.fp8_quant import (FP8_DTYPE, FP8_MAX, MIN_SCALE, scaled_fp8_quant,
                               scaled_fp8_quant_ref)
from tests.kernels.paged_utils import DEVICE, DTYPES


def _x(m, k, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 8
    return x.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m, k", [(1, 16), (5, 100), (3, 200)], ids=str)
def test_dynamic_per_token_matches_ref(dtype, m, k):
    x = _x(m, k, dtype)
    x[m // 2] = 0                                           # an all-zero row: MIN_SCALE
    q, s = scaled_fp8_quant(x)
    q_ref, s_ref = scaled_fp8_quant_ref(x)
    assert q.dtype == FP8_DTYPE and q.shape == (m, k) and s.shape == (m, 1)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    assert torch.equal(q.float(), q_ref.float())
    assert s[m // 2].item() == pytest.approx(MIN_SCALE) and (q[m // 2].float() == 0).all()
    # each row's largest magnitude maps to the format's largest value
    assert torch.equal(q.float().abs().amax(-1)[s[:, 0] > MIN_SCALE],
                       torch.full_like(s[:, 0], FP8_MAX)[s[:, 0] > MIN_SCALE])
    err = (q.float() * s - x.float()).abs()
    assert (err <= x.float().abs() * 2 ** -4 + 1e-6).all()  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_static_scale_saturates(dtype):
    x = _x(4, 70, dtype, seed=1)
    scale = torch.tensor([0.01], device=DEVICE)             # |x| / 0.01 overflows 448: clamped
    q, s = scaled_fp8_quant(x, scale)
    q_ref, _ = scaled_fp8_quant_ref(x, scale)
    assert s is scale
    assert torch.equal(q.float(), q_ref.float())
    assert q.float().abs().max().item() == FP8_MAX
    assert not torch.isnan(q.float()).any()


def test_empty_batch():
    q, s = scaled_fp8_quant(torch.zeros(0, 32, device=DEVICE))
    assert q.shape == (0, 32) and s.shape == (0, 1)


@pytest.mark.gpu
def test_gpu_large_rows():
    x = _x(64, 4096, torch.bfloat16, seed=2)
    q, s = scaled_fp8_quant(x)
    q_ref, s_ref = scaled_fp8_quant_ref(x)
    torch.testing.assert_close(s, s_ref)
    # the GPU's cast and the CPU's agree on the grid, ties included
    assert (q.float() != q_ref.float()).float().mean().item() < 1e-4
