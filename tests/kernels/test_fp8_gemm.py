"""Scaled fp8 matmul (Triton) against its torch twin: per-token and per-tensor activation
scales, per-channel weight scales, bias, M / N / K off the tiles, every output dtype; and on
the GPU the engine's fp8 linear path (torch._scaled_mm or the kernel) against the reference."""
from __future__ import annotations

import pytest
import torch

from kernels.fp8_gemm import fp8_gemm, fp8_gemm_ref
from kernels.fp8_quant import scaled_fp8_quant_ref
from runner.engine.quantization.fp8 import quantize_weight_per_channel
from tests.kernels.paged_utils import DEVICE, DTYPES

# exact products, fp32 sums in another order, then one rounding to the output dtype
TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (1.6e-2, 1.6e-2)}


def _operands(m, n, k, static=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(DEVICE)
    scale = torch.tensor([0.02], device=DEVICE) if static else None
    a, sa = scaled_fp8_quant_ref(x, scale)
    b, sb = quantize_weight_per_channel(w)
    return a, b, sa, sb, torch.randn(n, generator=gen).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m, n, k", [(1, 16, 32), (7, 40, 100), (20, 33, 64)], ids=str)
@pytest.mark.parametrize("static", [False, True], ids=["per_token", "per_tensor"])
def test_fp8_gemm_matches_ref(dtype, m, n, k, static):
    a, b, sa, sb, bias = _operands(m, n, k, static)
    for bb in (None, bias.to(dtype)):
        out = fp8_gemm(a, b, sa, sb, bb, dtype)
        ref = fp8_gemm_ref(a, b, sa, sb, bb, dtype)
        assert out.shape == (m, n) and out.dtype == dtype
        atol, rtol = TOL[dtype]
        torch.testing.assert_close(out.float(), ref.float(), atol=atol * 8, rtol=rtol)


def test_ref_is_dequantize_then_matmul():
    a, b, sa, sb, _ = _operands(5, 24, 48)
    want = (a.float() * sa) @ (b.float() * sb[:, None]).t()
    torch.testing.assert_close(fp8_gemm_ref(a, b, sa, sb, out_dtype=torch.float32), want)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_fp8_linear_matches_ref(m, dtype):
    """The engine's CUDA path (per-token quant kernel, then torch._scaled_mm for bf16 on
    Hopper or the Triton kernel) against the torch reference path on the same layer."""
    from runner.engine.layers.linear import RowParallelLinear
    from runner.engine.quantization.fp8 import Fp8Config

    torch.manual_seed(0)
    with torch.device(DEVICE):
        layer = RowParallelLinear(4096, 1024, bias=True, use_triton=True,
                                  quant_config=Fp8Config(), prefix="o_proj").to(dtype)
    layer.weight.data.normal_(0, 4096 ** -0.5)
    layer.bias.data.normal_(0, 1)
    layer.process_weights_after_loading()
    x = torch.randn(m, 4096, device=DEVICE, dtype=dtype)
    out = layer(x)
    layer.use_triton = False
    ref = layer(x)
    # the quant kernel and the reference now and then round one activation to the neighbouring
    # fp8 value (a 1/8 step of it): rare elements move by a few hundredths, none by more
    diff = (out.float() - ref.float()).abs()
    assert diff.max().item() < 0.1
    off = diff > 3e-2 + 2e-2 * ref.float().abs()
    assert off.float().mean().item() <= 1e-4, off.sum().item()
