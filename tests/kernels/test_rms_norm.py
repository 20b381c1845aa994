"""rms_norm / fused_add_rms_norm (Triton) against their torch twins and the engine's RMSNorm
layer: odd row counts, hidden sizes that are and are not powers of two, 3-D inputs, weights in
the activation dtype and in fp32."""
from __future__ import annotations

import pytest
import torch

from kernels.rms_norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from runner.engine.layers.layernorm import RMSNorm
from tests.kernels.paged_utils import DEVICE, DTYPES, ELEMENTWISE_TOL, assert_close

EPS = 1e-5


def _inputs(shape, dtype, seed=0, weight_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(DEVICE, weight_dtype or dtype)
    return x, residual, weight


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 96), (1, 256), (3, 5, 100)], ids=str)
def test_rms_norm_matches_refs(dtype, shape):
    x, _, weight = _inputs(shape, dtype)
    out = rms_norm(x, weight, EPS)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, rms_norm_ref(x, weight, EPS), ELEMENTWISE_TOL, dtype)

    layer = RMSNorm(shape[-1], EPS).to(DEVICE, dtype)
    layer.weight.data.copy_(weight)
    assert_close(out, layer(x), ELEMENTWISE_TOL, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 96), (5, 4096 // 16)], ids=str)
def test_fused_add_rms_norm_matches_refs(dtype, shape):
    x, residual, weight = _inputs(shape, dtype, seed=1)
    x_before, r_before = x.clone(), residual.clone()
    out, new_residual = fused_add_rms_norm(x, residual, weight, EPS)
    assert torch.equal(x, x_before) and torch.equal(residual, r_before)   # inputs untouched
    ref_out, ref_residual = fused_add_rms_norm_ref(x, residual, weight, EPS)
    assert_close(new_residual, ref_residual, ELEMENTWISE_TOL, dtype)
    assert_close(out, ref_out, ELEMENTWISE_TOL, dtype)

    layer = RMSNorm(shape[-1], EPS).to(DEVICE, dtype)
    layer.weight.data.copy_(weight)
    layer_out, layer_residual = layer(x, residual)
    assert_close(out, layer_out, ELEMENTWISE_TOL, dtype)
    assert_close(new_residual, layer_residual, ELEMENTWISE_TOL, dtype)


def test_fp32_weight_promotes_output_like_reference():
    x, _, weight = _inputs((3, 64), torch.float16, weight_dtype=torch.float32)
    out = rms_norm(x, weight, EPS)
    ref = rms_norm_ref(x, weight, EPS)
    assert out.dtype == ref.dtype == torch.float32
    assert_close(out, ref, ELEMENTWISE_TOL, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [4096, 5120, 8192, 3000])
def test_rms_norm_gpu_model_sizes(dtype, hidden):
    x, residual, weight = _inputs((1027, hidden), dtype, seed=2)
    assert_close(rms_norm(x, weight, EPS), rms_norm_ref(x, weight, EPS), ELEMENTWISE_TOL, dtype)
    out, new_residual = fused_add_rms_norm(x, residual, weight, EPS)
    ref_out, ref_residual = fused_add_rms_norm_ref(x, residual, weight, EPS)
    assert torch.equal(new_residual, ref_residual)
    assert_close(out, ref_out, ELEMENTWISE_TOL, dtype)
