"""sample (Triton) against its torch twin: token for token given the same uniforms, on irregular
vocabularies (one partial tile, several tiles, a partial last tile), three dtypes, greedy and
random rows side by side, banned (-inf) tokens, strided rows; greedy ties; the in-kernel Philox
noise by its statistics (frequencies of softmax(x / T)) and its determinism in the seed."""
from __future__ import annotations

import pytest
import torch

from kernels.sampling import U_MAX, U_MIN, sample, sample_ref
from tests.kernels.paged_utils import DEVICE, DTYPES

TEMPERATURES = [0.0, 0.5, 1.0, 0.0, 1.7, 0.05, 2.5, 0.8]     # 0: greedy row


def _scores(x: torch.Tensor, temperature: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """[R, V] what each row takes the argmax of: x (greedy) or x / T + Gumbel."""
    gumbel = -torch.log(-torch.log(noise.clamp(U_MIN, U_MAX)))
    t = temperature.clamp(min=1e-30)[:, None]
    return torch.where(temperature[:, None] == 0, x, x / t + gumbel)


def _check(logits, temperature, out, noise=None, ref=None):
    """Raw logprob and rank of the token each row chose, recomputed from the logits; with the
    noise, the token is the reference's, or ties its score to fp32 rounding."""
    tokens, logprobs, ranks = out
    rows = logits.shape[0]
    assert tokens.shape == logprobs.shape == ranks.shape == (rows,)
    assert tokens.dtype == ranks.dtype == torch.int64 and logprobs.dtype == torch.float32
    x = logits.float()
    if ref is not None:
        differ = tokens != ref[0]
        assert differ.sum() <= max(1, rows // 100), "near-ties must stay rare"
        if differ.any():
            s = _scores(x, temperature, noise)[differ]
            best = s.max(dim=-1).values
            mine = s.gather(1, tokens[differ, None]).squeeze(1)
            assert (mine >= best - 1e-5 * best.abs().clamp(min=1)).all(), (
                f"rows {differ.nonzero().flatten().tolist()}: {tokens[differ].tolist()} "
                f"!= {ref[0][differ].tolist()}")
            assert (temperature[differ] > 0).all(), "greedy rows must match exactly"
    expected_lp = torch.log_softmax(x, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected_lp, atol=1e-5, rtol=1e-5)
    chosen = x.gather(1, tokens[:, None])
    assert torch.equal(ranks, (x > chosen).sum(dim=-1) + 1)
    if ref is not None:
        assert torch.equal(ranks[tokens == ref[0]], ref[2][tokens == ref[0]])


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab,block_v", [(37, 16), (50, 64), (64, 16), (300, 64), (300, None)],
                         ids=str)
def test_sample_matches_ref(vocab, block_v, dtype, strided):
    gen = torch.Generator().manual_seed(vocab)
    rows = len(TEMPERATURES)
    if strided:
        base = 3 * torch.randn(rows, vocab + 11, generator=gen)
        base[1] -= 60.0
        base[2] += 80.0
        base = base.to(DEVICE, dtype)
        logits = base[:, 5:5 + vocab]
    else:
        logits = (3 * torch.randn(rows, vocab, generator=gen))
        logits[1] -= 60.0
        logits[2] += 80.0
        logits = logits.to(DEVICE, dtype)
    logits[3, 1::3] = float("-inf")                   # a greedy row with banned tokens
    logits[4, : vocab // 2] = float("-inf")           # a random row with banned tokens
    logits[4, -1] = float("-inf")
    assert logits.stride(1) == 1 and logits.stride(0) == vocab + (11 if strided else 0)
    temperature = torch.tensor(TEMPERATURES, device=DEVICE)
    noise = torch.rand(rows, vocab, generator=gen).to(DEVICE)

    out = sample(logits, temperature, seed=0, noise=noise, block_v=block_v)
    ref = sample_ref(logits, temperature, noise)
    _check(logits, temperature, out, noise, ref)
    assert torch.isfinite(out[1]).all()
    banned = logits.float() == float("-inf")
    assert not banned.gather(1, out[0][:, None]).any()


def test_noise_is_used_and_clamped():
    """u = 1 and u = 0 give finite Gumbels (16.6 and -4.5), so a logit lead of 20 still wins
    against u = 1, and a row of zero uniforms is still an argmax; on a flat row the largest
    uniform wins; greedy rows ignore u."""
    logits = torch.zeros(5, 40)
    logits[:4, 30] = 20.0
    noise = torch.full((5, 40), 0.5)
    noise[:, 0] = 0.0
    noise[:, 7] = 1.0
    noise[:, 23] = 0.999
    noise[3] = 0.0
    logits, noise = logits.to(DEVICE), noise.to(DEVICE)
    temperature = torch.tensor([1.0, 0.3, 0.0, 1.0, 1.0], device=DEVICE)
    out = sample(logits, temperature, seed=0, noise=noise, block_v=16)
    assert out[0].tolist() == [30, 30, 30, 30, 7]
    _check(logits, temperature, out, noise, sample_ref(logits, temperature, noise))


def test_greedy_ties_go_to_lowest_id():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(1)).clamp(max=4.0)
    logits[0, [20, 9]] = 9.0            # tile 1 lane 4 against tile 0 lane 9: 9
    logits[1, [19, 3, 35]] = 9.0        # one lane across tiles (3, 19, 35): the first tile
    logits[2, [39, 38]] = 9.0           # both in the partial last tile
    logits[3] = 1.5                     # all equal: 0
    logits[4, [33, 17]] = 9.0
    logits = logits.to(DEVICE)
    temperature = torch.zeros(5, device=DEVICE)
    out = sample(logits, temperature, seed=0, block_v=16)
    assert out[0].tolist() == [9, 3, 38, 0, 17]
    assert torch.equal(out[0], logits.argmax(dim=-1))
    assert out[2].tolist() == [1] * 5
    _check(logits, temperature, out)


# a row of all -inf has no distribution: its logprob is NaN, as log_softmax's
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.filterwarnings("ignore:divide by zero encountered")
def test_banned_tokens_and_masked_lanes():
    """Masked lanes past V must lose to -inf-free tokens anywhere, and -inf never wins."""
    vocab = 37                           # tiles of 16: lanes 5..15 of the last tile are masked
    logits = torch.full((6, vocab), float("-inf"))
    logits[0:2, 36] = -1e4               # the only token, in the partial tile
    logits[2:4, 0] = -1e4                # the only token, in the first tile
    logits = logits.to(DEVICE)
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 1.0], device=DEVICE)
    tokens, logprobs, ranks = sample(logits, temperature, seed=3, block_v=16)
    assert tokens.tolist() == [36, 36, 0, 0, 0, 0]    # rows 4, 5: all -inf, torch.argmax's 0
    assert logprobs[:4].tolist() == [0.0] * 4
    assert ranks.tolist() == [1] * 6


@pytest.mark.parametrize("block_v", [8, 16])
def test_rng_frequencies_match_softmax_over_t(block_v):
    """1000 draws from one row (1000 identical rows, one launch) against softmax(x / 0.7) by
    Pearson's chi-square; the same counts must fail against softmax(x / T) for a wrong T, so
    the bound is tight enough to see a dropped or misapplied temperature."""
    num = 1000 if block_v == 8 else 300            # the wide-tile run only checks the path
    x = torch.linspace(1.5, -1.5, 8)               # p from 0.46 down to 0.006 at T = 0.7
    logits = x.expand(num, 8).contiguous().to(DEVICE)
    temperature = torch.full((num,), 0.7, device=DEVICE)
    tokens = sample(logits, temperature, seed=1234, block_v=block_v)[0]
    counts = torch.bincount(tokens.cpu(), minlength=8).double()

    def p_value(t: float) -> float:
        expected = num * torch.softmax(x.double() / t, dim=0)
        stat = ((counts - expected) ** 2 / expected).sum()
        return float(torch.special.gammaincc(torch.tensor(3.5, dtype=torch.float64), stat / 2))

    assert p_value(0.7) > 1e-3, counts.tolist()
    if num == 1000:
        for wrong in (1.0, 0.5):
            assert p_value(wrong) < 1e-3, (wrong, counts.tolist())


def test_seed_determinism():
    """Flat rows: the same seed gives the same tokens (for any tile width), another seed or
    another row gives other ones; seed s + 1 must not replay seed s shifted by one row."""
    logits = torch.zeros(24, 64, device=DEVICE)
    temperature = torch.ones(24, device=DEVICE)
    a = sample(logits, temperature, seed=7)[0]
    assert torch.equal(a, sample(logits, temperature, seed=7)[0])
    assert torch.equal(a, sample(logits, temperature, seed=7, block_v=16)[0])
    b = sample(logits, temperature, seed=8)[0]
    assert not torch.equal(a, b)
    assert not torch.equal(a[1:], b[:-1])
    assert a.unique().numel() > 8                 # rows draw independent noise
    big = sample(logits, temperature, seed=2 ** 62 + 7)[0]
    assert not torch.equal(a, big)                # the seed's high word is part of the key


def test_per_row_seeds():
    """With a seed per row, a row's token depends on its seed alone, not on its batch slot."""
    logits = torch.zeros(4, 64, device=DEVICE)
    temperature = torch.ones(4, device=DEVICE)
    seeds = torch.tensor([5, 9, 5, 11], device=DEVICE)
    tokens = sample(logits, temperature, seed=seeds)[0]
    assert tokens[0] == tokens[2]
    swapped = sample(logits[:2], temperature[:2], seed=torch.tensor([11, 5], device=DEVICE))[0]
    assert swapped.tolist() == [tokens[3].item(), tokens[0].item()]
    many = sample(torch.zeros(16, 64, device=DEVICE), torch.ones(16, device=DEVICE),
                  seed=torch.arange(16, device=DEVICE))[0]
    assert many.unique().numel() > 4


def test_empty_batch_and_bad_arguments():
    logits = torch.zeros(3, 10, device=DEVICE)
    temperature = torch.ones(3, device=DEVICE)
    empty = sample(logits[:0], temperature[:0], seed=0)
    assert [t.shape for t in empty] == [(0,)] * 3
    bad = [
        dict(logits=logits[0]),
        dict(logits=logits.long()),
        dict(temperature=temperature[:2]),
        dict(temperature=temperature.half()),
        dict(noise=torch.rand(3, 9, device=DEVICE)),
        dict(noise=torch.rand(3, 10, device=DEVICE).double()),
        dict(seed=-1),
        dict(seed=torch.zeros(3, dtype=torch.int32, device=DEVICE)),
        dict(block_v=24),
    ]
    for kwargs in bad:
        args = dict(logits=logits, temperature=temperature, seed=0) | kwargs
        with pytest.raises(ValueError):
            sample(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sample_gpu_llama3_vocab(dtype):
    rows, vocab = 512, 128256
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(rows, vocab, generator=gen)).to(DEVICE, dtype)
    logits[::7, ::5] = float("-inf")
    temperature = torch.tensor(TEMPERATURES * (rows // len(TEMPERATURES)), device=DEVICE)
    noise = torch.rand(rows, vocab, generator=gen).to(DEVICE)
    out = sample(logits, temperature, seed=0, noise=noise)
    _check(logits, temperature, out, noise, sample_ref(logits, temperature, noise))


@pytest.mark.gpu
def test_rng_frequencies_gpu():
    """200k draws of a 32-token row: a temperature off by 3% must already fail."""
    num, vocab = 200_000, 32
    x = torch.linspace(2.0, -2.0, vocab)
    logits = x.expand(num, vocab).to(DEVICE, torch.bfloat16)    # row stride 0
    x = logits[0].float().cpu()
    tokens = sample(logits, torch.full((num,), 0.7, device=DEVICE), seed=99)[0]
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double()

    def p_value(t: float) -> float:
        expected = num * torch.softmax(x.double() / t, dim=0)
        stat = ((counts - expected) ** 2 / expected).sum()
        dof = torch.tensor((vocab - 1) / 2, dtype=torch.float64)
        return float(torch.special.gammaincc(dof, stat / 2))

    assert p_value(0.7) > 1e-3
    assert p_value(0.72) < 1e-3 and p_value(0.68) < 1e-3


@pytest.mark.gpu
def test_rng_uniform_over_a_huge_matrix():
    """4096 rows of a flat 262144-token vocabulary (R * V = 2^30 counters): tokens spread
    evenly over 64 id ranges, and rows do not repeat each other."""
    rows, vocab = 4096, 262144
    logits = torch.zeros(rows, vocab, device=DEVICE, dtype=torch.bfloat16)
    tokens = sample(logits, torch.ones(rows, device=DEVICE), seed=2024)[0].cpu()
    counts = torch.bincount(tokens // (vocab // 64), minlength=64).double()
    stat = ((counts - rows / 64) ** 2 / (rows / 64)).sum()
    assert float(torch.special.gammaincc(torch.tensor(31.5, dtype=torch.float64), stat / 2)) > 1e-3
    assert tokens.unique().numel() > rows * 0.95
