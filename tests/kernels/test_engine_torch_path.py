"""The engine's torch backend runs the kernels' own `*_ref` twins: one torch reference per op.

The layers of runner/engine (Attention, RMSNorm, SiluAndMul, RotaryEmbedding) built without
use_triton must give bit for bit what the twin in kernels/ gives, and must keep the twins'
semantics where a second copy once differed: a cache slot < 0 is a padding token that writes
nothing (the engine's old copy of the KV write wrote it to the cache's last slot). The kernel
files must also import without Triton, since the torch backend is what a CPU-only install runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kernels.paged_decode_attention import paged_decode_attention_ref
from kernels.prefill_attention import prefill_attention_ref
from kernels.reshape_and_cache import reshape_and_cache_ref
from kernels.rms_norm import fused_add_rms_norm_ref, rms_norm_ref
from kernels.rotary_embedding import rotary_embedding_ref
from kernels.silu_and_mul import silu_and_mul_ref
from runner.engine.attention import Attention
from runner.engine.layers.activation import SiluAndMul
from runner.engine.layers.layernorm import RMSNorm
from runner.engine.layers.rotary_embedding import RotaryEmbedding
from tests.kernels.paged_utils import DEVICE, make_block_tables, make_kv_cache, runner_meta

DTYPES = [torch.float32, torch.bfloat16]


def _slots(tables: torch.Tensor, query_lens, seq_lens, block_size: int) -> torch.Tensor:
    slots = []
    for b, (ql, sl) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(sl - ql, sl):
            slots.append(int(tables[b, pos // block_size]) * block_size + pos % block_size)
    return torch.tensor(slots, dtype=torch.long, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [None, 6])
def test_attention_layer_is_the_refs_and_skips_padding_slots(dtype, window):
    """A mixed step (decode rows, a fresh prompt, a chunk over a cached prefix) with two
    padding tokens (slot -1): the cache ends exactly as reshape_and_cache_ref leaves it (the
    last slot untouched), and the output is exactly the decode / prefill twins' output."""
    gen = torch.Generator().manual_seed(0)
    hq, hk, d, bs = 4, 2, 16, 4
    query_lens, prefix_lens = [1, 5, 1, 7], [9, 0, 3, 6]
    seq_lens = [q + p for q, p in zip(query_lens, prefix_lens)]
    tables, num_blocks = make_block_tables(seq_lens, bs, gen)
    cache = make_kv_cache(num_blocks, bs, hk, d, dtype, gen)
    slots = _slots(tables, query_lens, seq_lens, bs)
    slots[[6, 8]] = -1                  # a decode row and a prefill token write nothing
    assert num_blocks * bs - 1 not in slots.tolist()   # what slot -1 aliased in the old copy
    t = sum(query_lens)
    q = torch.randn(t, hq, d, generator=gen).to(DEVICE, dtype)
    k = torch.randn(t, hk, d, generator=gen).to(DEVICE, dtype)
    v = torch.randn(t, hk, d, generator=gen).to(DEVICE, dtype)
    last_slot = cache[:, -1, -1].clone()

    expected_cache = cache.clone()
    reshape_and_cache_ref(k, v, expected_cache, slots)
    meta = runner_meta(tables, query_lens, seq_lens, slots)
    layer = Attention(hq, d, d ** -0.5, hk, sliding_window=window)
    out = layer(q.view(t, -1), k.view(t, -1), v.view(t, -1), cache, meta).view(t, hq, d)

    assert torch.equal(cache, expected_cache)
    assert torch.equal(cache[:, -1, -1], last_slot)
    qsl = meta.query_start_loc
    decode = [b for b, n in enumerate(query_lens) if n == 1]
    rows = [qsl[b] for b in decode]
    want = paged_decode_attention_ref(q[rows], cache, tables[decode],
                                      torch.tensor([seq_lens[b] for b in decode]), d ** -0.5,
                                      window)
    assert torch.equal(out[rows], want)
    for b in meta.prefill_idx:
        s, e = qsl[b], qsl[b + 1]
        want = prefill_attention_ref(q[s:e], cache, [0, e - s], [seq_lens[b]], tables[b:b + 1],
                                     d ** -0.5, window)
        assert torch.equal(out[s:e], want)
    # and the whole-batch twins, as the kernels' tests call them, agree with the split
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    full = prefill_attention_ref(q, cache, meta.query_start_loc_t, lens, tables, d ** -0.5,
                                 window)
    torch.testing.assert_close(out, full, atol=1e-5 if dtype == torch.float32 else 2e-2,
                               rtol=1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norm_activation_and_rotary_layers_are_the_refs(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 48, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(7, 48, generator=gen).to(DEVICE, dtype)
    norm = RMSNorm(48, 1e-5).to(DEVICE, dtype)
    norm.weight.data.copy_(1 + 0.1 * torch.randn(48, generator=gen))
    assert torch.equal(norm(x), rms_norm_ref(x, norm.weight, 1e-5))
    for got, want in zip(norm(x, residual), fused_add_rms_norm_ref(x, residual, norm.weight,
                                                                    1e-5)):
        assert torch.equal(got, want)
    assert torch.equal(SiluAndMul()(x), silu_and_mul_ref(x))

    rope = RotaryEmbedding(16, 64, 10000.0, {"rope_type": "linear", "factor": 2.0}).to(DEVICE)
    positions = torch.tensor([0, 3, 17, 63, 5, 1, 2], device=DEVICE)
    qk = torch.randn(7, 6, 16, generator=gen).to(DEVICE, dtype)
    want_q, want_k = rotary_embedding_ref(positions, qk[:, :4].clone(), qk[:, 4:].clone(),
                                          rope.cos_sin_cache, 16)
    q, k = qk[:, :4], qk[:, 4:]                  # views: the layer rotates them in place
    got_q, got_k = rope(positions, q, k)
    assert got_q.data_ptr() == q.data_ptr()
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


def test_kernel_files_import_without_triton():
    """A CPU-only install has no triton: the refs still run, and a launcher says what is
    missing instead of failing at import."""
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None          # import triton -> ImportError
        import torch
        import runner.engine.attention, runner.engine.models
        from kernels.reshape_and_cache import reshape_and_cache, reshape_and_cache_ref
        cache = torch.zeros(2, 2, 4, 1, 8)
        kv = torch.ones(2, 1, 8)
        reshape_and_cache_ref(kv, kv, cache, torch.tensor([5, -1]))
        assert cache.sum() == 16 and cache[:, 1, 3].sum() == 0
        try:
            reshape_and_cache(kv, kv, cache, torch.tensor([5, -1]))
        except ImportError as err:
            assert "triton" in str(err)
        else:
            raise AssertionError("the kernel ran without triton")
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
