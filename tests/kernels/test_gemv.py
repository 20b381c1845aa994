"""gemv (Triton) against its torch twin: N and K off the tile sizes, both inner products (FMA and
tl.dot), split-K with its reduce pass, bias, a preallocated out, strided x rows, and the error
for a batch over MAX_M; then the engine's gate (use_triton linear layers and LM head on CUDA,
at most GEMV_MAX_M rows). Under the CPU interpreter the shapes stay small."""
from __future__ import annotations

import importlib

import pytest
import torch

import runner.engine.layers.linear as linear_mod
import runner.engine.layers.vocab_embedding as vocab_mod
from kernels.gemv import (FMA_MAX_M, MAX_M, GemvConfig, fma_block_k, gemv, gemv_config,
                         gemv_ref, m_pad)
from runner.engine.layers.linear import (GEMV_MAX_M, MergedColumnParallelLinear,
                                         QKVParallelLinear, RowParallelLinear, gemv_linear,
                                         use_gemv)
from runner.engine.layers.vocab_embedding import ParallelLMHead
from tests.kernels.paged_utils import ATTN_TOL, DEVICE, DTYPES, assert_close

# a reduction over K, like attention's: the same per-dtype tolerances
TOL = ATTN_TOL


def _inputs(m, n, k, dtype, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(DEVICE, dtype)   # outputs ~ N(0, 1)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n, k", [(37, 100), (300, 257)], ids=str)
def test_gemv_matches_ref(dtype, m, n, k):
    x, w, _ = _inputs(m, n, k, dtype)
    out = gemv(x, w)
    assert out.shape == (m, n) and out.dtype == dtype
    assert_close(out, gemv_ref(x, w), TOL, dtype)


# explicit configs: each kernel (FMA for M <= FMA_MAX_M, tl.dot), split-K (even and ragged
# K), a pipelined FMA loop, tiles wider than N or K
CONFIGS = [
    GemvConfig(16, 32, 4, 1, split_k=1, use_dot=False),
    GemvConfig(8, 64, 4, 1, split_k=3, use_dot=False),
    GemvConfig(8, 32, 4, 3, split_k=2, use_dot=False),
    GemvConfig(16, 32, 4, 1, split_k=1, use_dot=True),
    GemvConfig(32, 16, 4, 1, split_k=4, use_dot=True),
    GemvConfig(64, 128, 4, 1, split_k=2, use_dot=False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m, n, k", [(1, 37, 100), (2, 45, 256), (4, 20, 70)], ids=str)
def test_gemv_configs_with_bias(dtype, cfg, m, n, k):
    x, w, b = _inputs(m, n, k, dtype, bias=True, seed=1)
    assert_close(gemv(x, w, b, config=cfg), gemv_ref(x, w, b), TOL, dtype)


def test_preallocated_out_and_strided_x():
    dtype = torch.float16
    x, w, b = _inputs(3, 40, 70, dtype, bias=True, seed=2)
    # x rows inside a wider buffer (row stride 90), out rows inside a wider buffer too
    buf = torch.zeros(3, 90, device=DEVICE, dtype=dtype)
    buf[:, 5:75] = x
    xv = buf[:, 5:75]
    assert not xv.is_contiguous()
    out_buf = torch.full((3, 50), 7.0, device=DEVICE, dtype=dtype)
    out = out_buf[:, :40]
    assert gemv(xv, w, b, out=out) is out
    assert_close(out, gemv_ref(x, w, b), TOL, dtype)
    assert (out_buf[:, 40:] == 7.0).all()           # nothing written past N
    # every other row of a taller buffer
    tall = torch.zeros(6, 70, device=DEVICE, dtype=dtype)
    tall[::2] = x
    assert_close(gemv(tall[::2], w), gemv_ref(x, w), TOL, dtype)


def test_x_with_a_column_stride_is_copied():
    x, w, _ = _inputs(2, 20, 33, torch.float32, seed=3)
    xt = x.t().contiguous().t()                      # [2, 33] with stride(-1) == 2
    assert xt.stride(-1) != 1
    assert_close(gemv(xt, w), gemv_ref(x, w), TOL, torch.float32)


def test_m_over_max_is_refused():
    x, w, _ = _inputs(MAX_M + 1, 16, 32, torch.float32)
    with pytest.raises(ValueError, match="MAX_M"):
        gemv(x, w)


def test_fma_config_over_its_rows_is_refused():
    x, w, _ = _inputs(FMA_MAX_M + 1, 16, 32, torch.float32)
    with pytest.raises(ValueError, match="FMA kernel"):
        gemv(x, w, config=GemvConfig(16, 32, 4, 1, use_dot=False))


def test_gpu_heuristic_is_static_and_splits_few_rows(monkeypatch):
    """The GPU branch of gemv_config (a pure function of shapes): the same shapes give the
    same config; in fp32 few output rows for the SM count split K, many do not; small batches
    take the FMA kernel with x rows in the weight tile's layout, larger ones tl.dot; 16-bit
    types get the tiles measured on the H100."""
    gemv_mod = importlib.import_module("kernels.gemv")
    monkeypatch.setattr(gemv_mod, "is_interpreter", lambda: False)
    for dtype in DTYPES:
        for m in range(1, MAX_M + 1):
            for n, k in [(4096, 14336), (128256, 4096), (1000, 1000)]:
                cfg = gemv_config(m, n, k, dtype, 132)
                assert cfg == gemv_config(m, n, k, dtype, 132)
                assert cfg.use_dot == (m > 2)
                if not cfg.use_dot:
                    assert cfg.block_k >= fma_block_k(dtype, cfg.num_warps)
                    assert m_pad(m, False) <= FMA_MAX_M
    # fp32 splits few output rows; the measured 16-bit tiles never split
    assert gemv_config(8, 4096, 14336, torch.float32, 132).split_k > 1
    assert gemv_config(1, 128256, 4096, torch.float32, 132).split_k == 1
    assert gemv_config(8, 4096, 14336, torch.bfloat16, 132) == GemvConfig(64, 128, 4, 6, 1, True)
    assert gemv_config(1, 4096, 14336, torch.float16, 132) == GemvConfig(2, 1024, 4, 1, 1, False)


def test_gemv_linear_flattens_leading_dims():
    x, w, b = _inputs(6, 24, 40, torch.float32, bias=True, seed=4)
    x3 = x.view(2, 3, 40)
    out = gemv_linear(x3, w, b)
    assert out.shape == (2, 3, 24)
    assert_close(out, torch.nn.functional.linear(x3, w, b), TOL, torch.float32)


def test_gate_needs_triton_cuda_and_a_small_batch():
    x = torch.randn(GEMV_MAX_M, 16)
    assert not use_gemv(False, x)
    assert use_gemv(True, x) == x.is_cuda
    assert not use_gemv(True, torch.randn(GEMV_MAX_M + 1, 16, device=DEVICE))
    assert not use_gemv(True, torch.randn(0, 16, device=DEVICE))


def test_layers_route_small_batches_to_gemv(monkeypatch):
    """The layers' dispatch, on CPU: with the CUDA condition lifted, use_triton layers send at
    most GEMV_MAX_M rows through gemv (with the bias where the layer adds it) and give
    F.linear's result; layers without use_triton, and larger batches, never call it."""
    # the module, not the package's `gemv` attribute (the function of the same name)
    gemv_mod = importlib.import_module("kernels.gemv")
    calls = []
    real_gemv = gemv_mod.gemv

    def counting_gemv(*a, **kw):
        calls.append(a[0].shape)
        return real_gemv(*a, **kw)

    def cpu_gate(use_triton, x):
        return use_triton and 0 < x.numel() <= GEMV_MAX_M * x.shape[-1]

    monkeypatch.setattr(gemv_mod, "gemv", counting_gemv)
    monkeypatch.setattr(linear_mod, "use_gemv", cpu_gate)
    monkeypatch.setattr(vocab_mod, "use_gemv", cpu_gate)
    torch.manual_seed(0)

    def pair(make):
        fast, ref = make(True), make(False)
        for p in fast.parameters():
            p.data.normal_(0, 0.1)
        ref.load_state_dict(fast.state_dict())
        return fast, ref

    layers = [
        pair(lambda t: QKVParallelLinear(32, 8, 4, 2, bias=True, use_triton=t)),
        pair(lambda t: MergedColumnParallelLinear(32, [24, 24], use_triton=t)),
        pair(lambda t: RowParallelLinear(32, 20, bias=True, use_triton=t)),
    ]
    head, head_ref = pair(lambda t: ParallelLMHead(50, 32, use_triton=t))
    for m in (1, GEMV_MAX_M, GEMV_MAX_M + 1):
        x = torch.randn(m, 32)
        calls.clear()
        for fast, ref in layers:
            assert_close(fast(x), ref(x), TOL, torch.float32)
        assert_close(head.compute_logits(x), head_ref.compute_logits(x), TOL, torch.float32)
        assert calls == ([(m, 32)] * 4 if m <= GEMV_MAX_M else []), (m, calls)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, GEMV_MAX_M, GEMV_MAX_M + 1])
def test_engine_layers_on_gpu_match_torch(m):
    """use_triton layers on CUDA give F.linear's result (through gemv up to GEMV_MAX_M rows)."""
    dtype = torch.bfloat16
    torch.manual_seed(0)
    row = RowParallelLinear(512, 320, bias=True, use_triton=True).to(DEVICE, dtype)
    ref = RowParallelLinear(512, 320, bias=True).to(DEVICE, dtype)
    head = ParallelLMHead(1000, 512, use_triton=True).to(DEVICE, dtype)
    for p in (row.weight, row.bias, head.weight):
        p.data.normal_(0, 512 ** -0.5)
    ref.load_state_dict(row.state_dict())
    x = torch.randn(m, 512, device=DEVICE, dtype=dtype)
    assert_close(row(x), ref(x), TOL, dtype)
    assert_close(head.compute_logits(x), x @ head.weight.t(), TOL, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("n, k", [(6144, 4096), (4096, 14336), (32000, 5120), (1000, 1000)],
                         ids=str)
def test_gemv_gpu_llama_shapes(dtype, m, n, k):
    x, w, b = _inputs(m, n, k, dtype, bias=True)
    assert_close(gemv(x, w, b), gemv_ref(x, w, b), TOL, dtype)
    assert_close(gemv(x, w), gemv_ref(x, w), TOL, dtype)
