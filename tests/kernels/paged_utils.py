"""Helpers of the kernel tests: paged KV caches with shuffled block tables, tolerances by dtype,
and the engine's AttentionMetadata for running runner/engine/attention.py's Attention layer."""
from __future__ import annotations

import torch

from runner.engine.attention import AttentionMetadata

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]     # kv_cache_dtype='fp8*' caches

# (atol, rtol) per dtype. bf16 allows ~2 ulps: besides the rounding of P before PV, Triton's
# CPU interpreter truncates fp32 -> bf16 where the GPU rounds to nearest even.
ATTN_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3),
            torch.bfloat16: (2e-2, 2e-2)}
ELEMENTWISE_TOL = {torch.float32: (1e-5, 1.3e-6), torch.float16: (1e-3, 1e-3),
                   torch.bfloat16: (2e-2, 2e-2)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, dtype: torch.dtype,
                 loosen: float = 1.0) -> None:
    atol, rtol = tol[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * loosen,
                               rtol=rtol * loosen)


def make_kv_cache(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                  dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """[2, num_blocks, block_size, Hk, D] random keys and values (dtype may be an fp8 type)."""
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    return cache.to(dtype=dtype, device=DEVICE)


def make_block_tables(seq_lens: list[int], block_size: int, gen: torch.Generator,
                      extra_cols: int = 1, dtype: torch.dtype = torch.int32
                      ) -> tuple[torch.Tensor, int]:
    """Shuffled, disjoint block tables padded with 0 (like the engine) -> (tables, num_blocks)."""
    need = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(need) + 3                  # a few spare blocks nobody owns
    perm = torch.randperm(num_blocks, generator=gen)
    width = max(need) + extra_cols
    tables = torch.zeros(len(seq_lens), width, dtype=dtype)
    at = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[at:at + n]
        at += n
    return tables.to(DEVICE), num_blocks


def runner_meta(block_tables: torch.Tensor, query_lens: list[int], seq_lens: list[int],
                slot_mapping: torch.Tensor | None = None) -> AttentionMetadata:
    """The AttentionMetadata the engine's input builder makes for the torch backend: one-token
    sequences are decode rows (batched), the others prefill chunks."""
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    decode = [b for b, n in enumerate(query_lens) if n == 1]
    return AttentionMetadata(
        slot_mapping=(torch.empty(0, dtype=torch.long, device=DEVICE) if slot_mapping is None
                      else slot_mapping),
        query_start_loc=qsl, seq_lens=list(seq_lens), block_tables=block_tables,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        decode_only=len(decode) == len(query_lens),
        query_start_loc_t=torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        seq_lens_t=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        decode_idx=torch.tensor(decode, dtype=torch.long, device=DEVICE),
        prefill_idx=tuple(b for b, n in enumerate(query_lens) if n > 1),
        decode_seq_lens=torch.tensor([seq_lens[b] for b in decode], device=DEVICE),
        decode_query_rows=torch.tensor([qsl[b] for b in decode], dtype=torch.long,
                                       device=DEVICE))
