"""reshape_and_cache (Triton) against its torch twin (also the engine's KV write on the torch
backend): shuffled slots across blocks, padding slots (-1) that must leave the cache untouched,
strided k/v rows of a fused qkv, block sizes 4-32, all three dtypes."""
from __future__ import annotations

import pytest
import torch

from kernels.reshape_and_cache import reshape_and_cache, reshape_and_cache_ref
from tests.kernels.paged_utils import DEVICE, DTYPES, FP8_DTYPES


def _case(dtype, num_tokens, num_kv_heads, head_dim, block_size, num_blocks, num_padding, seed):
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    cache = cache.to(DEVICE, dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:num_padding]] = -1
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    return cache, slots.to(DEVICE), k, v


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [4, 8, 16, 32])
def test_reshape_and_cache_matches_refs(dtype, block_size):
    cache, slots, k, v = _case(dtype, 13, 3, 64, block_size, 7, 3, block_size)
    expected = cache.clone()
    reshape_and_cache_ref(k, v, expected, slots)
    reshape_and_cache(k, v, cache, slots)
    assert torch.equal(cache, expected)


@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp8_cache_rounds_and_saturates(dtype, cache_dtype):
    """kv_cache_dtype='fp8*': values are stored unscaled, rounded to nearest, and saturate at
    the format's largest finite value instead of becoming NaN; padding slots stay untouched."""
    cache, slots, k, v = _case(dtype, 13, 3, 64, 8, 7, 3, 4)
    cache = cache.to(cache_dtype)
    biggest = torch.finfo(cache_dtype).max
    big = min(2 * biggest, torch.finfo(dtype).max)
    k[0, 0, :4] = torch.tensor([big, -big, 1.5, -0.25], dtype=dtype)
    v[1, 1, :2] = torch.tensor([-big, 3.0], dtype=dtype)
    expected = cache.clone()
    reshape_and_cache_ref(k, v, expected, slots)
    reshape_and_cache(k, v, cache, slots)
    raw = cache.view(torch.uint8)
    assert torch.equal(raw, expected.view(torch.uint8))
    keep = slots >= 0

    # hand-checked values: what was written reads back as the clamped, rounded input
    flat = cache.view(2, -1, 3, 64).float()
    if int(slots[0]) >= 0:
        assert flat[0, int(slots[0]), 0, :4].tolist() == [biggest, -biggest, 1.5, -0.25]
    if int(slots[1]) >= 0:
        assert flat[1, int(slots[1]), 1, :2].tolist() == [-biggest, 3.0]
    written = flat[0, slots[keep]]
    assert torch.isfinite(written).all()
    want = k[keep].float().clamp(-biggest, biggest)
    # half an ulp: e4m3 keeps 3 mantissa bits (2^-4 relative), e5m2 2 bits (2^-3); below the
    # smallest normal the step is fixed (subnormals: 2^-9 for e4m3, 2^-16 for e5m2)
    e4m3 = cache_dtype == torch.float8_e4m3fn
    bound = want.abs() * (2 ** -4 if e4m3 else 2 ** -3) + (2 ** -10 if e4m3 else 2 ** -17)
    assert ((written - want).abs() <= bound).all()


def test_padding_slots_leave_cache_untouched():
    cache, slots, k, v = _case(torch.float16, 5, 2, 64, 16, 4, 5, 1)   # every slot is -1
    before = cache.clone()
    reshape_and_cache(k, v, cache, slots)
    assert torch.equal(cache, before)


def test_strided_rows_of_fused_qkv():
    gen = torch.Generator().manual_seed(2)
    num_tokens, hq, hk, d = 9, 4, 2, 128
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * d, generator=gen).to(DEVICE, torch.bfloat16)
    k = qkv[:, hq * d:(hq + hk) * d].view(num_tokens, hk, d)
    v = qkv[:, (hq + hk) * d:].view(num_tokens, hk, d)
    cache = torch.zeros(2, 5, 8, hk, d, dtype=torch.bfloat16, device=DEVICE)
    slots = torch.tensor([3, 4, 5, 17, 18, -1, 30, 0, 39], device=DEVICE)
    expected = cache.clone()
    reshape_and_cache_ref(k, v, expected, slots)
    reshape_and_cache(k, v, cache, slots)
    assert torch.equal(cache, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reshape_and_cache_gpu_llama3_8b(dtype):
    cache, slots, k, v = _case(dtype, 4099, 8, 128, 16, 600, 64, 3)
    expected = cache.clone()
    reshape_and_cache_ref(k, v, expected, slots)
    reshape_and_cache(k, v, cache, slots)
    assert torch.equal(cache, expected)
