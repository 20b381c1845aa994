"""lora_shrink / lora_expand (Triton, interpreter on CPU) against their torch twins and against
a per-token loop written from the definition: batches mixing slots, tokens without an adapter,
ranks and widths that are not multiples of the blocks, a column offset (a fused layer's part)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.lora_expand import lora_expand, lora_expand_ref
from kernels.lora_shrink import lora_shrink, lora_shrink_ref
from tests.kernels.paged_utils import DEVICE


def segments(token_slots: list[int], num_slots: int):
    """The segment tensors the engine builds: token rows grouped by slot."""
    slots = np.asarray(token_slots)
    order = np.argsort(np.where(slots < 0, num_slots, slots), kind="stable")
    order = order[slots[order] >= 0]
    counts = np.bincount(slots[slots >= 0], minlength=num_slots)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.int32, device=DEVICE)  # noqa: E731
    return as_t(order), as_t(counts), as_t(starts)


CASES = [  # (token slots, S, K, R, N)
    ([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 0], 3, 40, 8, 24),
    ([-1, 1, -1, 1, 0], 2, 16, 16, 64),
    ([2] * 37 + [-1] * 3 + [0] * 5, 4, 72, 5, 33),
    ([-1, -1], 2, 16, 8, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_shrink_and_expand_match_refs_and_the_definition(case, dtype):
    token_slots, S, K, R, N = case
    T = len(token_slots)
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(T, K, generator=gen).to(DEVICE, dtype)
    a = torch.randn(S, R, K, generator=gen).to(DEVICE, dtype)
    b = torch.randn(S, N, R, generator=gen).to(DEVICE, dtype)
    seg = segments(token_slots, S)
    s = lora_shrink(x, a, *seg)
    s_ref = lora_shrink_ref(x, a, *seg)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for t, z in enumerate(token_slots):
        if z >= 0:
            want = x[t].float() @ a[z].float().T
            torch.testing.assert_close(s[t], want, rtol=tol, atol=tol)
            torch.testing.assert_close(s_ref[t], want, rtol=tol, atol=tol)
    base = torch.randn(T, N + 7, generator=gen).to(DEVICE, dtype)
    y = lora_expand(base.clone(), s_ref, b, *seg, col_offset=3)
    y_ref = lora_expand_ref(base.clone(), s_ref, b, *seg, col_offset=3)
    want = base.clone().float()
    for t, z in enumerate(token_slots):
        if z >= 0:
            want[t, 3:3 + N] += s_ref[t] @ b[z].float().T
    torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(y_ref.float(), want, rtol=tol, atol=tol * 10)
    untouched = [t for t, z in enumerate(token_slots) if z < 0]
    assert torch.equal(y[untouched], base[untouched])


def test_expand_of_a_part_reads_a_column_view_of_the_shrink_output():
    """A fused layer's part i: s[:, i*R:(i+1)*R] (a strided view) into columns of its slice."""
    token_slots, S, K, R = [1, 0, 1, -1, 0], 2, 16, 4
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, K, generator=gen)
    a = torch.randn(S, 3 * R, K, generator=gen)
    b = torch.randn(S, 8, R, generator=gen)
    seg = segments(token_slots, S)
    s = lora_shrink(x, a, *seg)
    y = lora_expand(torch.zeros(5, 24), s[:, R:2 * R], b, *seg, col_offset=8)
    y_ref = lora_expand_ref(torch.zeros(5, 24), s[:, R:2 * R], b, *seg, col_offset=8)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert y[:, :8].abs().sum() == 0 and y[:, 16:].abs().sum() == 0
