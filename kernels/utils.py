"""Helpers shared by the kernel launchers: interpreter detection, SM count, dot precision and the
tile sizes of the attention kernels.

Launchers ask this module how to launch (block sizes, warps, stages, split counts); the kernels
themselves never read it. Everything here is computed from shapes, dtypes and the device, never
from tensor contents, so a launcher stays free of host syncs and safe under CUDA-graph capture.

It also hands out `triton` and `triton.language` to the op files. Triton is an optional
dependency (a CPU-only install has none), while the engine's torch backend runs every op on the
`*_ref` twin that sits in the same file as its kernel: without Triton those files still import,
their `@triton.jit` kernels become stubs, and a launcher that reaches one raises ImportError.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:                 # CPU-only install: the *_ref twins still import
    HAS_TRITON = False

    class _MissingKernel:
        def __init__(self, name: str):
            self.__name__ = name

        def __getitem__(self, grid):
            raise ImportError(f"the Triton kernel {self.__name__} needs the triton package; "
                              "install it or use kernel_backend='torch'.")

    class _MissingTriton:
        """Stands in for `triton` and `triton.language` at import time only."""

        def jit(self, fn=None, **_options):
            if fn is None:                       # @triton.jit(do_not_specialize=...)
                return self.jit
            return _MissingKernel(fn.__name__)

        def constexpr(self, value):
            return value

        def next_power_of_2(self, n: int) -> int:
            return 1 << (int(n) - 1).bit_length()

        def cdiv(self, a: int, b: int) -> int:
            return -(-a // b)

    triton = tl = _MissingTriton()


def is_interpreter() -> bool:
    """True when Triton runs kernels in its numpy interpreter (TRITON_INTERPRET=1, CPU tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; a small fixed count off CUDA (interpreter runs)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _num_sms(index)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 models must not silently drop to TF32 in tl.dot: the fp32 path is checked for exact
    greedy agreement with the torch reference."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_upcast(dtype: torch.dtype) -> bool:
    """Triton's interpreter computes tl.dot on bf16 operands wrongly (numpy has no bf16), so
    under the interpreter bf16 operands are widened to fp32 before the dot. bf16 x bf16 products
    are exact in fp32 and accumulation is fp32 either way, so the result is the same math; on a
    GPU the native bf16 tensor-core dot is used."""
    return is_interpreter() and dtype == torch.bfloat16


def fp8_max(dtype: torch.dtype) -> float:
    """The largest finite value of an fp8 cache dtype (values saturate there); 0.0 otherwise."""
    if dtype.itemsize == 1 and dtype.is_floating_point:
        return float(torch.finfo(dtype).max)
    return 0.0


def fp16_dots(q_dtype: torch.dtype, cache_dtype: torch.dtype) -> bool:
    """Attention over an fp8 cache with a bf16 query computes its dots in fp16: fp8 -> fp16
    is one conversion instruction per pair of values where fp8 -> bf16 takes several (H100,
    Llama-2-13B heads, batch 160 x 576 keys: 423 us with fp16 dots against 474 us with bf16
    dots). Every fp8 value is exact in fp16, P gains precision, and the query is saturated at
    fp16's largest value (+-65504) on its way."""
    return cache_dtype.itemsize == 1 and q_dtype == torch.bfloat16


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class TileConfig:
    block_m: int      # query rows per program (prefill) or padded GQA group rows (decode)
    block_n: int      # keys per inner-loop tile
    num_warps: int
    num_stages: int


def prefill_tile_config(head_dim: int, dtype: torch.dtype) -> TileConfig:
    """Tiles of the prefill kernel, from a sweep on H100 (Triton 3.6, bf16, 32/8 heads, causal
    prompts of 256-2048 tokens): 64-row tiles with 4 warps beat 128-row tiles with 8 warps by
    up to 40% on short prompts and tie on long ones; 32-key tiles win at head_dim 128 (less
    register pressure next to the 64 x 128 fp32 accumulator). fp32 runs IEEE dots on the FMA
    units (no TF32: exactness first), where only small tiles avoid spilling."""
    if is_interpreter():
        # small tiles so that the small CPU test shapes still cross several tiles
        return TileConfig(16, 16, 4, 1)
    if dtype == torch.float32:
        return TileConfig(16, 64, 4, 2)
    if head_dim <= 64:
        return TileConfig(64, 64, 4, 2)
    return TileConfig(64, 32, 4, 2)


def decode_tile_config(group_size: int, head_dim: int, dtype: torch.dtype,
                       cache_dtype: Optional[torch.dtype] = None) -> TileConfig:
    """Tiles of the decode kernel: the GQA group is padded to 16 rows (the smallest tl.dot M).
    64-key tiles with 3 stages stream K/V at ~3 TB/s on H100 (bf16, B=256, 2k context); 32-key
    tiles lose 8%, 128-key tiles tie at small batch and lose at mid batch. fp32 (FMA dots)
    also prefers 64 keys. An fp8 cache (converted in registers before each dot) streams
    fastest with 64 keys, 2 warps and 2 stages: 2.57 TB/s against 2.21 with the bf16 tiles
    (H100, Llama-2-13B heads, batch 160 x 576 keys, `scripts/profile_kv.py`)."""
    block_m = max(16, next_power_of_2(group_size))
    if is_interpreter():
        return TileConfig(block_m, 16, 4, 1)
    if cache_dtype is not None and cache_dtype.itemsize == 1 and head_dim <= 128 \
            and block_m == 16:
        return TileConfig(block_m, 64, 2, 2)
    if dtype == torch.float32:
        return TileConfig(block_m, 64, 4, 2)
    if head_dim > 128:
        return TileConfig(block_m, 32, 4, 2)
    return TileConfig(block_m, 64, 4, 3)


# below this many keys per split the reduce pass and the extra programs cost more than they win
# (H100, batch 1: 128 keys per split takes a 1k-token context from 9.2 to 6.8 us per layer)
MIN_KEYS_PER_SPLIT = 128
MAX_SPLITS = 32


def pick_num_splits(batch: int, num_kv_heads: int, max_kv_len: int, device: torch.device) -> int:
    """Flash-decoding split count from static shapes only (CUDA-graph safe).

    One program per (sequence, kv head) leaves most SMs idle at small batch; splitting the KV
    length multiplies the programs until about two waves cover the card, as long as each split
    still streams at least MIN_KEYS_PER_SPLIT keys. Rounded down to a power of two so that the
    set of compiled kernel variants stays small.
    """
    programs = batch * num_kv_heads
    target = 2 * num_sms(device)
    if programs >= target:
        return 1
    splits = min(cdiv(target, programs), cdiv(max_kv_len, MIN_KEYS_PER_SPLIT), MAX_SPLITS)
    splits = max(splits, 1)
    return 1 << (splits.bit_length() - 1)    # round down: keep >= MIN_KEYS_PER_SPLIT per split
