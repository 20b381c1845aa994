"""rotary_embedding (Triton) against its torch twin and the engine's RotaryEmbedding layer,
with plain and Llama-3-scaled tables, partial rotary, GQA head counts, and q/k given as row
views of a fused qkv projection (rotated in place)."""
from __future__ import annotations

import pytest
import torch

from kernels.rotary_embedding import rotary_embedding, rotary_embedding_ref
from runner.engine.layers.rotary_embedding import RotaryEmbedding
from tests.kernels.paged_utils import DEVICE, DTYPES, ELEMENTWISE_TOL, assert_close

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _rope(*args) -> RotaryEmbedding:
    return RotaryEmbedding(*args).to(DEVICE)


def _qkv(num_tokens, hq, hk, d, dtype, gen):
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * d, generator=gen).to(DEVICE, dtype)
    q = qkv[:, :hq * d].view(num_tokens, hq, d)                          # row views, in place
    k = qkv[:, hq * d:(hq + hk) * d].view(num_tokens, hk, d)
    return qkv, q, k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scaling", [None, LLAMA3_SCALING], ids=["plain", "llama3"])
@pytest.mark.parametrize("hq,hk,d,partial", [(4, 2, 64, 1.0), (3, 3, 128, 1.0),
                                             (8, 2, 64, 0.5)], ids=["g2-d64", "g1-d128",
                                                                    "g4-partial"])
def test_rotary_matches_refs(dtype, scaling, hq, hk, d, partial):
    gen = torch.Generator().manual_seed(0)
    rope = _rope(d, 4096, 500000.0, scaling, partial)
    positions = torch.cat([torch.arange(5), torch.randint(0, 4096, (6,), generator=gen)])
    positions = positions.to(DEVICE)
    _, q, k = _qkv(positions.numel(), hq, hk, d, dtype, gen)
    engine_q, engine_k = rope(positions, q.clone(), k.clone())
    ref_q, ref_k = rotary_embedding_ref(positions, q.clone(), k.clone(), rope.cos_sin_cache,
                                        rope.rotary_dim)

    out_q, out_k = rotary_embedding(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()
    for out, ref, engine in ((q, ref_q, engine_q), (k, ref_k, engine_k)):
        assert_close(out, ref, ELEMENTWISE_TOL, dtype)
        assert_close(out, engine, ELEMENTWISE_TOL, dtype)
        if partial < 1.0:
            assert torch.equal(out[..., rope.rotary_dim:], ref[..., rope.rotary_dim:])


def test_rotary_leaves_v_alone():
    gen = torch.Generator().manual_seed(1)
    rope = _rope(64, 128, 10000.0)
    qkv, q, k = _qkv(7, 4, 2, 64, torch.float16, gen)
    v_before = qkv[:, 6 * 64:].clone()
    rotary_embedding(torch.arange(7, device=DEVICE), q, k, rope.cos_sin_cache, 64)
    assert torch.equal(qkv[:, 6 * 64:], v_before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_gpu_llama3_8b(dtype):
    gen = torch.Generator().manual_seed(2)
    scaling = dict(LLAMA3_SCALING, original_max_position_embeddings=8192)
    rope = _rope(128, 131072, 500000.0, scaling)
    positions = torch.randint(0, 131072, (2049,), generator=gen).to(DEVICE)
    _, q, k = _qkv(positions.numel(), 32, 8, 128, dtype, gen)
    ref_q, ref_k = rotary_embedding_ref(positions, q.clone(), k.clone(), rope.cos_sin_cache, 128)
    rotary_embedding(positions, q, k, rope.cos_sin_cache, 128)
    assert_close(q, ref_q, ELEMENTWISE_TOL, dtype)
    assert_close(k, ref_k, ELEMENTWISE_TOL, dtype)
