"""Arguments that change from step to step compile no new kernel variants (GPU only).

Triton specialises integer arguments on divisibility by 16 (and on == 1) and pointers on
16-byte alignment; each new combination compiles a variant, seconds in the middle of a run
(a timed Llama-3-8B throughput run lost ~2.5 s to three of them). The engine slices its index
tensors per step (seq_lens, positions, slot_mapping at a row offset), its block tables change
width, and the sampler takes a new seed each call: none of these may change the compile key.
Each test runs a kernel on two such variations and counts the compiled variants; the results
are checked against the torch twins so that the kernels still compute the right thing.
"""
from __future__ import annotations

import pytest
import torch

from kernels.prefill_attention import (prefill_attention, prefill_attention_kernel,
                                       prefill_attention_ref)
from kernels.reshape_and_cache import (reshape_and_cache, reshape_and_cache_kernel,
                                       reshape_and_cache_ref)
from kernels.rotary_embedding import (rotary_embedding, rotary_embedding_kernel,
                                      rotary_embedding_ref)
from kernels.sampling import sample, sample_kernel
from tests.kernels.paged_utils import ATTN_TOL, assert_close

pytestmark = pytest.mark.gpu


def _variants(fn) -> int:
    return sum(len(cache[0]) for cache in fn.device_caches.values())


def test_sampler_seed_is_not_specialised():
    logits = torch.randn(4, 1000, device="cuda")
    temperature = torch.ones(4, device="cuda")
    # the sampler's seeds are >= 2^32 (int64 arguments; an int32 one is another type)
    sample(logits, temperature, 2 ** 32)                  # warm: one variant for this shape
    before = _variants(sample_kernel)
    for seed in (2 ** 32 + 1, 2 ** 40 + 3, 2 ** 33 + 16, 2 ** 61 + 7):
        sample(logits, temperature, seed)
    assert _variants(sample_kernel) == before


def test_prefill_index_slices_and_block_table_width_are_not_specialised():
    gen = torch.Generator().manual_seed(0)
    cache = torch.randn(2, 64, 16, 2, 64, generator=gen).to("cuda", torch.bfloat16)
    q = torch.randn(24, 4, 64, generator=gen).to("cuda", torch.bfloat16)

    def run(offset: int, width: int):
        # two sequences of 12 new tokens after 20 cached ones; the index tensors start at
        # `offset` of a larger buffer (unaligned pointers for odd offsets)
        lens = torch.tensor([0] * offset + [32, 32], dtype=torch.int32, device="cuda")[offset:]
        qsl = torch.tensor([0] * offset + [0, 12, 24], dtype=torch.int32,
                           device="cuda")[offset:]
        tables = torch.zeros(2, width, dtype=torch.int32)
        tables[0, :2], tables[1, :2] = torch.tensor([5, 9]), torch.tensor([33, 2])
        tables = tables.cuda()
        out = prefill_attention(q, cache, qsl, lens, tables, 0.125, max_query_len=12)
        assert_close(out, prefill_attention_ref(q, cache, qsl, lens, tables, 0.125), ATTN_TOL,
                     torch.bfloat16)

    run(0, 16)
    before = _variants(prefill_attention_kernel)
    run(1, 17)
    run(3, 3)
    assert _variants(prefill_attention_kernel) == before


def test_rotary_positions_and_cache_slot_slices_are_not_specialised():
    gen = torch.Generator().manual_seed(1)
    cos_sin = torch.randn(64, 32, generator=gen).cuda()
    cache = torch.zeros(2, 8, 16, 2, 32, device="cuda", dtype=torch.bfloat16)

    def run(offset: int):
        positions = torch.arange(offset + 5, device="cuda")[offset:]
        slots = torch.arange(offset + 5, device="cuda")[offset:]
        q = torch.randn(5, 4, 32, generator=gen).to("cuda", torch.bfloat16)
        k = torch.randn(5, 2, 32, generator=gen).to("cuda", torch.bfloat16)
        q_ref, k_ref = rotary_embedding_ref(positions, q.clone(), k.clone(), cos_sin, 32)
        rotary_embedding(positions, q, k, cos_sin, 32)
        assert_close(q, q_ref, ATTN_TOL, torch.bfloat16)
        cache_ref = cache.clone()
        reshape_and_cache_ref(k, k, cache_ref, slots)
        reshape_and_cache(k, k, cache, slots)
        assert torch.equal(cache, cache_ref)

    run(0)
    before = _variants(rotary_embedding_kernel), _variants(reshape_and_cache_kernel)
    run(1)
    run(3)
    assert (_variants(rotary_embedding_kernel), _variants(reshape_and_cache_kernel)) == before
