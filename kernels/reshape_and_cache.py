"""KV-cache write by slot: the new keys and values of a step go into their paged cache slots.

    k, v          [T, num_kv_heads, head_dim]     this step's keys and values (row views allowed)
    kv_cache      [2, num_blocks, block_size, num_kv_heads, head_dim]   0 = keys, 1 = values;
                  the model's dtype, or fp8 (e4m3fn / e5m2: kv_cache_dtype='fp8*'), where
                  values are stored unscaled and saturate at the format's largest finite value
    slot_mapping  [T] int64 = block_id * block_size + offset; a slot < 0 skips the token
                  (padding rows of a CUDA-graph batch)

One program per token copies that token's [num_kv_heads, head_dim] key and value rows; a
padding token's program returns at once. The launcher never reads slot_mapping on the host, so
it is safe inside CUDA-graph capture.
"""
from __future__ import annotations

import torch

from kernels.utils import fp8_max, is_interpreter, next_power_of_2, tl, triton


@triton.jit
def _round_to_fp8_grid(x, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr):
    """x (fp32, already saturated) rounded half-to-even onto the fp8 format's grid, in fp32.

    Only the interpreter runs this: its fp32 -> fp8 cast rounds ties away from zero and drops
    the carry into the exponent (0.484 -> 0.25), where the GPU's cast rounds correctly; values
    already on the grid convert exactly, so the cast that follows is exact."""
    bits = x.to(tl.int32, bitcast=True)
    exp = tl.maximum(((bits >> 23) & 0xFF) - 127, MIN_EXP)    # subnormals share MIN_EXP's ulp
    ulp = tl.exp2((exp - MANT_BITS).to(tl.float32))
    q = tl.abs(x) / ulp                                        # exact: ulp is a power of two
    r = tl.floor(q)
    frac = q - r
    odd = (r.to(tl.int32) % 2) == 1
    r = tl.where((frac > 0.5) | ((frac == 0.5) & odd), r + 1.0, r)
    return tl.where(x < 0, -r * ulp, r * ulp)


# slot_mapping may be a slice at any offset: no alignment variants (one scalar load a program)
@triton.jit(do_not_specialize_on_alignment=["slot_mapping_ptr"])
def reshape_and_cache_kernel(
    k_ptr, v_ptr, kv_cache_ptr, slot_mapping_ptr,
    stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_head,
    num_kv_heads, head_dim,
    BLOCK_SIZE: tl.constexpr,   # tokens per cache block
    BLOCK_H: tl.constexpr,      # num_kv_heads padded to a power of two
    BLOCK_D: tl.constexpr,      # head_dim padded to a power of two
    FP8_MAX: tl.constexpr,      # > 0: the cache is fp8 and values saturate at +-FP8_MAX
    FP8_ROUND: tl.constexpr,    # interpreter only: round onto the fp8 grid before the cast
    FP8_MANT_BITS: tl.constexpr,
    FP8_MIN_EXP: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot < 0:
        return                                  # padding token (CUDA-graph batch): no write
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < head_dim)

    k = tl.load(k_ptr + tok * stride_k_tok + heads[:, None] * stride_k_head + dims[None, :],
                mask=mask)                                               # [BLOCK_H, BLOCK_D]
    v = tl.load(v_ptr + tok * stride_v_tok + heads[:, None] * stride_v_head + dims[None, :],
                mask=mask)

    if FP8_MAX > 0:
        k = tl.minimum(tl.maximum(k.to(tl.float32), -FP8_MAX), FP8_MAX)
        v = tl.minimum(tl.maximum(v.to(tl.float32), -FP8_MAX), FP8_MAX)
        if FP8_ROUND:
            k = _round_to_fp8_grid(k, FP8_MANT_BITS, FP8_MIN_EXP)
            v = _round_to_fp8_grid(v, FP8_MANT_BITS, FP8_MIN_EXP)

    block_id = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    dst = (kv_cache_ptr + block_id * stride_c_blk + offset * stride_c_tok
           + heads[:, None] * stride_c_head + dims[None, :])             # [BLOCK_H, BLOCK_D]
    tl.store(dst, k.to(kv_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + stride_c_kv, v.to(kv_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    """Writes k, v [T, Hk, D] into kv_cache [2, num_blocks, block_size, Hk, D] at slot_mapping."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape, (v.shape, k.shape)
    assert kv_cache.shape[0] == 2 and kv_cache.shape[3:] == (num_kv_heads, head_dim), \
        (kv_cache.shape, k.shape)
    assert slot_mapping.shape[0] >= num_tokens, (slot_mapping.shape, num_tokens)
    # the kernel addresses the head_dim axis with unit stride (rows of a fused qkv are fine)
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    assert kv_cache.stride(-1) == 1
    if num_tokens == 0:
        return
    block_size = kv_cache.shape[2]
    reshape_and_cache_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        num_kv_heads, head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_H=next_power_of_2(num_kv_heads),
        BLOCK_D=next_power_of_2(head_dim),
        FP8_MAX=fp8_max(kv_cache.dtype),
        FP8_ROUND=is_interpreter() and fp8_max(kv_cache.dtype) > 0,
        FP8_MANT_BITS=2 if kv_cache.dtype == torch.float8_e5m2 else 3,
        FP8_MIN_EXP=-14 if kv_cache.dtype == torch.float8_e5m2 else -6,
        num_warps=4,
    )


def reshape_and_cache_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
    """Pure-torch twin of `reshape_and_cache`, and the engine's KV write on
    kernel_backend='torch': scatter rows by flat slot, skipping slots < 0."""
    num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape[1:]
    slots = slot_mapping[:k.shape[0]]
    keep = slots >= 0                                                    # [T] bool
    flat = (num_blocks * block_size, num_kv_heads, head_dim)
    k, v = k[keep], v[keep]
    limit = fp8_max(kv_cache.dtype)
    if limit:                                     # fp8 cache: saturate as the kernel does
        k, v = k.float().clamp(-limit, limit), v.float().clamp(-limit, limit)
    kv_cache[0].view(flat)[slots[keep]] = k.to(kv_cache.dtype)
    kv_cache[1].view(flat)[slots[keep]] = v.to(kv_cache.dtype)
