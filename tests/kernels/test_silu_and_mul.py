"""silu_and_mul (Triton) against its torch twin and the engine's SiluAndMul layer: odd widths,
widths over one program's block, 3-D inputs, large-magnitude gates (exp overflow side)."""
from __future__ import annotations

import pytest
import torch

from kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref
from runner.engine.layers.activation import SiluAndMul
from tests.kernels.paged_utils import DEVICE, DTYPES, ELEMENTWISE_TOL, assert_close


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 2 * 37), (3, 2 * 1500), (2, 3, 2 * 64)], ids=str)
def test_silu_and_mul_matches_refs(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    x = (4 * torch.randn(shape, generator=gen)).to(DEVICE, dtype)
    out = silu_and_mul(x)
    assert out.shape == shape[:-1] + (shape[-1] // 2,) and out.dtype == dtype
    assert_close(out, silu_and_mul_ref(x), ELEMENTWISE_TOL, dtype)
    assert_close(out, SiluAndMul()(x), ELEMENTWISE_TOL, dtype)


# exp(100) overflows to inf in the interpreter's numpy, as it does on the GPU: silu -> -0
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_extreme_gates_stay_finite():
    x = torch.tensor([[-100.0, -20.0, 0.0, 30.0, 2.0, 3.0, 4.0, 5.0]], device=DEVICE)
    out = silu_and_mul(x)
    assert torch.isfinite(out).all()
    assert_close(out, silu_and_mul_ref(x), ELEMENTWISE_TOL, torch.float32)


def test_preallocated_out():
    x = torch.randn(5, 2 * 48, device=DEVICE, dtype=torch.float16)
    out = torch.empty(5, 48, device=DEVICE, dtype=torch.float16)
    assert silu_and_mul(x, out=out) is out
    assert_close(out, silu_and_mul_ref(x), ELEMENTWISE_TOL, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_silu_and_mul_gpu_llama3_8b(dtype):
    x = torch.randn(1027, 2 * 14336, device=DEVICE, dtype=dtype)
    assert_close(silu_and_mul(x), silu_and_mul_ref(x), ELEMENTWISE_TOL, dtype)
