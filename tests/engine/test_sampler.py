"""Sampler: empirical distributions against a naive reference written here, greedy, seeds, logprobs.

The reference functions below work on Python floats one token at a time (no shared code with the
sampler): they apply the documented processing order and return the probabilities the sampler
should draw from. Distribution tests draw 20k tokens in one batched call and compare frequencies.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from runner.engine.sampler import Sampler, SamplingRequest, compute_prompt_logprobs
from runner.engine.sampling_params import SamplingParams

LOGITS = [2.0, 1.2, 0.3, -0.5, 1.7, -1.4, 0.9, 0.0]  # vocab 8, no ties
N_DRAWS = 20_000


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The tensors here are tiny; with several OpenMP threads on a busy 2-core machine each op
    # waits milliseconds for thread wake-ups, which would dominate the file's run time.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------- naive reference

def ref_penalized(logits, prompt, output, *, repetition_penalty=1.0, frequency_penalty=0.0,
                  presence_penalty=0.0, min_tokens=0, eos=None, stop_token_ids=()):
    out = [float(v) for v in logits]
    if len(output) < min_tokens:
        for t in list(stop_token_ids) + ([eos] if eos is not None else []):
            out[t] = -math.inf
    for t in range(len(out)):
        if t in prompt or t in output:
            out[t] = out[t] / repetition_penalty if out[t] > 0 else out[t] * repetition_penalty
        count = output.count(t)
        out[t] -= frequency_penalty * count + (presence_penalty if count > 0 else 0.0)
    return out


def _softmax_over(values, keep):
    m = max(values[i] for i in keep)
    e = {i: math.exp(values[i] - m) for i in keep}
    s = sum(e.values())
    return {i: e[i] / s for i in keep}


def ref_probs(logits, *, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0):
    """Probabilities after temperature, top-k, top-p (smallest prefix reaching top_p), min-p."""
    v = [x / temperature for x in logits]
    keep = {i for i in range(len(v)) if v[i] != -math.inf}
    order = sorted(keep, key=lambda i: -v[i])
    if top_k > 0:
        keep = set(order[:top_k])
    p = _softmax_over(v, keep)
    if top_p < 1.0:
        cum, kept = 0.0, set()
        for i in order:
            if i not in keep:
                continue
            kept.add(i)
            cum += p[i]
            if cum >= top_p:
                break
        keep = kept
        p = _softmax_over(v, keep)
    if min_p > 0.0:
        best = max(p.values())
        keep = {i for i in keep if p[i] >= min_p * best}
        p = _softmax_over(v, keep)
    return torch.tensor([p.get(i, 0.0) for i in range(len(v))], dtype=torch.float64)


def empirical(params, logits=LOGITS, prompt=(), output=(), eos=None, n=N_DRAWS, seed=0):
    sampler = Sampler(generator=torch.Generator().manual_seed(seed))
    rows = torch.tensor([logits] * n, dtype=torch.float32)
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    reqs = [SamplingRequest(params, list(prompt), list(output), None, eos_ids)
            for _ in range(n)]
    tokens = torch.tensor([t.token_id for t in sampler(rows, reqs)])
    return torch.bincount(tokens, minlength=len(logits)).double() / n


def assert_matches(freq, expected):
    assert torch.all(freq[expected == 0] == 0), (freq, expected)  # filtered tokens never appear
    assert torch.all(freq[expected > 0.01] > 0), (freq, expected)
    # 0.015 is > 4 standard deviations of a frequency estimated from 20k draws.
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)


# ---------------------------------------------------------------------- distributions

@pytest.mark.parametrize("kwargs", [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=1.9),  # vLLM 0.24 caps temperature at 2
    dict(top_k=1),
    dict(top_k=3),
    dict(top_k=3, temperature=0.7),
    dict(top_p=0.5),
    dict(top_p=0.8),
    dict(top_p=0.05),  # below the best token's mass: only the best survives
    dict(min_p=0.3),
    dict(min_p=0.05, temperature=1.5),
    dict(top_k=4, top_p=0.7, min_p=0.3),
])
def test_filters_match_reference(kwargs):
    expected = ref_probs(LOGITS, **kwargs)
    assert_matches(empirical(SamplingParams(**kwargs)), expected)


@pytest.mark.parametrize("kwargs", [
    dict(repetition_penalty=1.8),
    dict(repetition_penalty=0.6),
    dict(frequency_penalty=0.7),
    dict(presence_penalty=1.2),
    dict(presence_penalty=-0.8),
    dict(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.5, temperature=0.8),
])
def test_penalties_match_reference(kwargs):
    # token 3 and 5 have negative logits, so the repetition penalty's multiply branch is used.
    prompt, output = [0, 3, 3, 6], [1, 1, 1, 5, 0]
    sampling = {k: kwargs[k] for k in ("temperature",) if k in kwargs}
    penalties = {k: v for k, v in kwargs.items() if k != "temperature"}
    expected = ref_probs(ref_penalized(LOGITS, prompt, output, **penalties), **sampling)
    assert_matches(empirical(SamplingParams(**kwargs), prompt=prompt, output=output), expected)


def test_min_tokens_masks_eos_and_stop_tokens():
    params = SamplingParams(min_tokens=3, stop_token_ids=[4])
    for output in ([], [1, 1]):  # still below min_tokens: eos (0) and stop id 4 are banned
        expected = ref_probs(ref_penalized(LOGITS, [], output, min_tokens=3, eos=0,
                                           stop_token_ids=[4]))
        freq = empirical(params, output=output, eos=0)
        assert freq[0] == 0 and freq[4] == 0
        assert_matches(freq, expected)
    # once min_tokens are out, eos is allowed again (it is the most likely token)
    assert_matches(empirical(params, output=[1, 1, 1], eos=0), ref_probs(LOGITS))
    # no EOS ids: only the stop token ids are masked
    freq = empirical(params, output=[], eos=None)
    assert freq[0] > 0.2 and freq[4] == 0
    # several EOS ids (generation_config's list): every one is masked
    freq = empirical(SamplingParams(min_tokens=3), output=[], eos=[0, 4])
    assert freq[0] == 0 and freq[4] == 0 and freq.sum() > 0.99


def test_mixed_batch_rows_keep_their_own_params():
    configs = [dict(top_k=2), dict(top_p=0.6, temperature=0.7), dict(), dict(min_p=0.4)]
    n = 8000
    sampler = Sampler(generator=torch.Generator().manual_seed(5))
    params = [SamplingParams(**c) for c in configs]
    reqs = [SamplingRequest(params[i % len(configs)], [], [], None, ())
            for i in range(n * len(configs))]
    rows = torch.tensor([LOGITS] * len(reqs))
    tokens = torch.tensor([t.token_id for t in sampler(rows, reqs)]).view(n, len(configs))
    for j, c in enumerate(configs):
        freq = torch.bincount(tokens[:, j], minlength=8).double() / n
        expected = ref_probs(LOGITS, **c)
        assert torch.all(freq[expected == 0] == 0)
        assert torch.allclose(freq, expected, atol=0.025), (c, freq, expected)


# ---------------------------------------------------------------------- greedy

def test_greedy_is_argmax_with_lowest_id_on_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -0.5, -0.5]])
    reqs = [SamplingRequest(SamplingParams(temperature=0.0), [], [], None, ())] * 3
    assert [t.token_id for t in Sampler()(logits, reqs)] == [1, 0, 2]


def test_greedy_with_penalties_matches_reference_on_random_rows():
    rng = random.Random(0)
    torch.manual_seed(0)
    vocab, rows = 16, 300
    logits = torch.randn(rows, vocab) * 2
    reqs, expected = [], []
    for i in range(rows):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 6))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(0, 8))]
        kw = dict(repetition_penalty=rng.choice([1.0, 0.7, 1.5, 2.0]),
                  frequency_penalty=rng.choice([0.0, 0.5, -0.3, 1.5]),
                  presence_penalty=rng.choice([0.0, 0.9, -1.0]),
                  min_tokens=rng.choice([0, 3]))
        eos = rng.choice([None, 2])
        stop_ids = rng.choice([[], [5, 7]])
        reqs.append(SamplingRequest(SamplingParams(temperature=0.0, stop_token_ids=stop_ids, **kw),
                                    prompt, output, None, () if eos is None else (eos,)))
        ref = ref_penalized(logits[i].tolist(), prompt, output, eos=eos, stop_token_ids=stop_ids,
                            **kw)
        expected.append(max(range(vocab), key=lambda t: (ref[t], -t)))
    got = [t.token_id for t in Sampler()(logits, reqs)]
    assert got == expected


def test_logits_processors_two_and_three_argument_forms():
    seen = {}

    def ban_top(output_ids, row):
        seen["output"] = list(output_ids)
        row = row.clone()
        row[0] = -math.inf
        return row

    def boost_prompt_head(prompt_ids, output_ids, row):
        seen["prompt"] = list(prompt_ids)
        row[prompt_ids[0]] += 100.0
        return row

    params = SamplingParams(temperature=0.0, logits_processors=[ban_top])
    logits = torch.tensor([LOGITS])
    out = Sampler()(logits, [SamplingRequest(params, [7], [3, 4], None, ())])
    assert out[0].token_id == 4 and seen["output"] == [3, 4]  # 0 banned, 4 is the runner-up
    # raw logprobs are taken before processors run
    assert out[0].logprob == pytest.approx(torch.log_softmax(logits[0].double(), -1)[4].item(),
                                           abs=1e-6)
    params = SamplingParams(temperature=0.0, logits_processors=[ban_top, boost_prompt_head])
    out = Sampler()(logits, [SamplingRequest(params, [5, 1], [], None, ())])
    assert out[0].token_id == 5 and seen["prompt"] == [5, 1]
    # a processor that bans tokens also holds for random sampling
    freq = empirical(SamplingParams(logits_processors=[ban_top]), n=4000)
    assert freq[0] == 0


# ---------------------------------------------------------------------- seeds

def _run_steps(make_batch, steps, seeded_index):
    """Runs `steps` decode steps; the seeded row's history grows with its own tokens."""
    sampler = Sampler(generator=torch.Generator().manual_seed(999))
    history = []
    for step in range(steps):
        logits, reqs = make_batch(step, history)
        history.append(sampler(logits, reqs)[seeded_index].token_id)
    return history


def test_seeded_request_is_batch_independent():
    vocab, steps = 50, 25
    step_logits = torch.randn(steps, vocab, generator=torch.Generator().manual_seed(1))
    seeded = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2,
                            seed=1234)

    def alone(seed):
        g = torch.Generator().manual_seed(seed)
        return _run_steps(
            lambda step, hist: (step_logits[step:step + 1],
                                [SamplingRequest(seeded, [1, 2, 3], list(hist), g, ())]),
            steps, 0)

    def batched(seed, position):
        g = torch.Generator().manual_seed(seed)
        others_rng = torch.Generator().manual_seed(77)
        other_gens = [torch.Generator().manual_seed(100 + i) for i in range(32)]
        mixes = [SamplingParams(temperature=0.0), SamplingParams(), SamplingParams(top_p=0.5),
                 SamplingParams(top_k=3, temperature=1.7, presence_penalty=1.0),
                 SamplingParams(seed=5, min_p=0.2)]

        def make(step, hist):
            logits = torch.randn(32, vocab, generator=others_rng)
            logits[position] = step_logits[step]
            reqs = []
            for i in range(32):
                if i == position:
                    reqs.append(SamplingRequest(seeded, [1, 2, 3], list(hist), g, ()))
                else:
                    p = mixes[i % len(mixes)]
                    gen = other_gens[i] if p.seed is not None else None
                    reqs.append(SamplingRequest(p, [4], [i % vocab] * step, gen, (2,)))
            return logits, reqs
        return _run_steps(make, steps, position)

    reference = alone(1234)
    assert batched(1234, 0) == reference
    assert batched(1234, 17) == reference
    assert batched(1234, 31) == reference
    assert alone(4321) != reference  # the seed, not luck, decides the tokens


# ---------------------------------------------------------------------- logprobs

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_raw_logprobs_rank_and_top_logprobs(dtype):
    vocab = 20
    g = torch.Generator().manual_seed(3)
    # distinct multiples of 0.5 are exact in bfloat16, so no two tokens tie in either dtype
    logits = torch.stack([torch.randperm(vocab, generator=g) * 0.5 - 4.0 for _ in range(6)])
    logits = logits.to(dtype)
    params = [SamplingParams(logprobs=None), SamplingParams(temperature=0.0, logprobs=0),
              SamplingParams(top_k=3, temperature=0.5, logprobs=3),
              SamplingParams(repetition_penalty=1.9, presence_penalty=1.5, logprobs=5),
              SamplingParams(top_p=0.3, logprobs=vocab), SamplingParams(min_p=0.5, logprobs=1)]
    reqs = [SamplingRequest(p, [0, 1], [2, 2], None, ()) for p in params]
    out = Sampler(generator=torch.Generator().manual_seed(0))(logits, reqs)
    ref = torch.log_softmax(logits.double(), dim=-1)  # from the raw logits, never processed
    for i, (p, tok) in enumerate(zip(params, out)):
        row = ref[i].tolist()
        assert tok.logprob == pytest.approx(row[tok.token_id], abs=1e-5)
        assert tok.rank == 1 + sum(v > row[tok.token_id] for v in row)
        if p.logprobs is None:
            assert tok.top_logprobs is None
            continue
        best = sorted(range(vocab), key=lambda t: -row[t])[:p.logprobs]
        assert [t for t, _ in tok.top_logprobs] == best
        for t, lp in tok.top_logprobs:
            assert lp == pytest.approx(row[t], abs=1e-5)


def test_compute_prompt_logprobs():
    torch.manual_seed(4)
    logits = torch.randn(7, 30) * 2
    targets = [3, 0, 29, 7, 7, 12, 1]
    got = compute_prompt_logprobs(logits, targets, 4)
    ref = torch.log_softmax(logits.double(), dim=-1)
    assert len(got) == len(targets)
    for i, (lp, rank, top) in enumerate(got):
        row = ref[i].tolist()
        assert lp == pytest.approx(row[targets[i]], abs=1e-5)
        assert rank == 1 + sum(v > row[targets[i]] for v in row)
        assert [t for t, _ in top] == sorted(range(30), key=lambda t: -row[t])[:4]
        assert all(v == pytest.approx(row[t], abs=1e-5) for t, v in top)
    assert [top for _, _, top in compute_prompt_logprobs(logits, targets, 0)] == [[]] * 7
    assert compute_prompt_logprobs(logits[:0], [], 2) == []


# ---------------------------------------------------------------------- the fused Triton path
# Sampler(use_triton=True) serves all-plain calls with kernels/sampling.py (under the Triton
# interpreter on CPU). Fewer draws than above: each row is one interpreted program.

N_FUSED = 800


def _fused_draws(params, n=N_FUSED, seed=0):
    sampler = Sampler(generator=torch.Generator().manual_seed(seed), use_triton=True)
    rows = torch.tensor([LOGITS] * n, dtype=torch.float32)
    reqs = [SamplingRequest(params, [], [], None, ()) for _ in range(n)]
    return torch.tensor([t.token_id for t in sampler(rows, reqs)])


def test_fused_path_draws_from_softmax_over_t():
    # kernels' own tests check the draw at scale; this one checks the temperature the sampler
    # hands the kernel: 0.07 is 4 standard deviations of a frequency near 0.5 from 800 draws,
    # and T = 1 or 1 / 0.5 would move token 0's frequency by more than 0.18
    freq = torch.bincount(_fused_draws(SamplingParams(temperature=0.5)),
                          minlength=8).double() / N_FUSED
    assert torch.allclose(freq, ref_probs(LOGITS, temperature=0.5), atol=0.07), freq
    for wrong in (1.0, 2.0):
        assert not torch.allclose(freq, ref_probs(LOGITS, temperature=wrong), atol=0.07)


def test_fused_path_is_reproducible_and_keyed_by_the_generator_seed():
    params = SamplingParams(temperature=1.0)
    a, b = _fused_draws(params, n=60, seed=3), _fused_draws(params, n=60, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, _fused_draws(params, n=60, seed=4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_path_greedy_and_logprobs_equal_the_torch_path(dtype):
    vocab = 300
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(6, vocab, generator=g) * 3).to(dtype)
    params = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0),
              SamplingParams(temperature=0.0, logprobs=0), SamplingParams(logprobs=5),
              SamplingParams(temperature=0.3, logprobs=1), SamplingParams(temperature=0.0)]
    reqs = [SamplingRequest(p, [1], [2], None, (0,)) for p in params]
    fused = Sampler(torch.Generator().manual_seed(0), use_triton=True)(logits, reqs)
    plain = Sampler(torch.Generator().manual_seed(0))(logits, reqs)
    ref = torch.log_softmax(logits.double(), dim=-1)
    for i, (p, f, t) in enumerate(zip(params, fused, plain)):
        row = ref[i].tolist()
        if p.temperature == 0.0:
            assert f.token_id == t.token_id
        assert f.logprob == pytest.approx(row[f.token_id], abs=1e-5)
        assert f.rank == 1 + sum(v > row[f.token_id] for v in row)
        if p.logprobs is None:
            assert f.top_logprobs is None
            continue
        best = sorted(range(vocab), key=lambda tok: -row[tok])[:p.logprobs]
        assert [tok for tok, _ in f.top_logprobs] == best
        assert all(lp == pytest.approx(row[tok], abs=1e-5) for tok, lp in f.top_logprobs)


@pytest.mark.parametrize("kwargs", [
    dict(top_k=3), dict(top_p=0.8), dict(min_p=0.2), dict(repetition_penalty=1.3),
    dict(frequency_penalty=0.5), dict(presence_penalty=0.5), dict(min_tokens=5),
    dict(logits_processors=[lambda out, row: row]),
])
def test_fused_path_leaves_other_rows_to_the_torch_path(kwargs):
    # one such row sends the whole call down the torch path: with equal generators both
    # samplers then draw the same tokens, which the fused path's own random stream would not
    n = 64
    g = torch.Generator().manual_seed(9)
    rows = torch.randn(n, 40, generator=g)
    special = SamplingParams(**kwargs)
    reqs = [SamplingRequest(special if i == 0 else SamplingParams(), [1], [2], None, (0,))
            for i in range(n)]
    fused = Sampler(torch.Generator().manual_seed(1), use_triton=True)(rows, reqs)
    plain = Sampler(torch.Generator().manual_seed(1))(rows, reqs)
    assert [t.token_id for t in fused] == [t.token_id for t in plain]
    plain_reqs = [SamplingRequest(SamplingParams(), [1], [2], None, (0,))] * n
    fused = Sampler(torch.Generator().manual_seed(1), use_triton=True)(rows, plain_reqs)
    plain = Sampler(torch.Generator().manual_seed(1))(rows, plain_reqs)
    assert [t.token_id for t in fused] != [t.token_id for t in plain]


def test_fused_path_leaves_seeded_requests_to_the_torch_path():
    rows = torch.randn(8, 40, generator=torch.Generator().manual_seed(2))
    params = SamplingParams(seed=11)
    out = []
    for sampler in (Sampler(use_triton=True), Sampler()):
        reqs = [SamplingRequest(params, [], [], torch.Generator().manual_seed(11), ())
                for _ in range(8)]
        out.append([t.token_id for t in sampler(rows, reqs)])
    assert out[0] == out[1]
