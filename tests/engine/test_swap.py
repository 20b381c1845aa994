"""Preemption by swap (swap_space, preemption_mode): a preempted group of several sequences
(beams, best_of / n > 1) has its KV blocks copied to the CPU swap space and back instead of
being recomputed, and gives the same outputs as a cache with room for everything; single
sequences keep recompute; preemption_mode='recompute' and swap_space=0 turn swapping off;
swap_space is validated. CPU, tiny models; the cache is squeezed with num_gpu_blocks_override.
"""
from __future__ import annotations

import pytest

from runner.engine import LLM, BeamSearchParams, SamplingParams
from runner.engine.block_manager import BlockManager
from runner.engine.config import total_cpu_memory
from runner.engine.sequence import Sequence, SequenceGroup

PROMPTS = ["Paris is the capital", "Hello", "The quick brown fox jumps over"] * 2
TIGHT = dict(num_gpu_blocks_override=20, max_num_batched_tokens=16)
BEAMS = SamplingParams(use_beam_search=True, best_of=3, n=3, temperature=0.0, max_tokens=12,
                       logprobs=1)


def _run(path, params, **kw):
    llm = LLM(path, **{**dict(max_model_len=48, block_size=4, dtype="float32", device="cpu"),
                       **kw})
    try:
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        stats = llm.llm_engine.get_stats()
        engine = llm.llm_engine
        if engine.cpu_block_manager is not None:       # every swapped block came back
            assert engine.cpu_block_manager.num_free_blocks == stats["num_cpu_blocks"]
        assert engine.block_manager.num_free_blocks == stats["num_gpu_blocks"]
    finally:
        llm.llm_engine.shutdown()
    return outs, stats


def _assert_same(outs, refs, atol=1e-4):
    for a, b in zip(outs, refs):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        for c, d in zip(a.outputs, b.outputs):
            assert abs(c.cumulative_logprob - d.cumulative_logprob) < atol
            for x, y in zip(c.logprobs or [], d.logprobs or []):
                assert x.keys() == y.keys()
                assert all(abs(x[t].logprob - y[t].logprob) < atol for t in x)


@pytest.fixture(scope="module")
def path(tiny_model_factory):
    return tiny_model_factory("llama_gqa")


@pytest.fixture(scope="module")
def roomy_beams(path):
    return _run(path, BEAMS)[0]


@pytest.mark.parametrize("caching", [True, False])
def test_swapped_beams_equal_no_preemption(path, roomy_beams, caching):
    outs, stats = _run(path, BEAMS, swap_space=0.01, enable_prefix_caching=caching, **TIGHT)
    assert stats["num_preemptions"] > 0
    assert stats["num_swapped_out"] == stats["num_preemptions"] == stats["num_swapped_in"]
    _assert_same(outs, roomy_beams)


def test_recompute_mode_and_no_swap_space_recompute(path, roomy_beams):
    for kw in (dict(preemption_mode="recompute"), dict(swap_space=0)):
        outs, stats = _run(path, BEAMS, **TIGHT, **kw)
        assert stats["num_preemptions"] > 0 and stats["num_swapped_out"] == 0
        _assert_same(outs, roomy_beams)


def test_llm_beam_search_swaps(path):
    bp = BeamSearchParams(beam_width=3, max_tokens=12)
    results = {}
    for kw in ({}, dict(swap_space=0.01, **TIGHT)):
        llm = LLM(path, max_model_len=48, block_size=4, **kw)
        results[bool(kw)] = [[s.tokens for s in b.sequences]
                             for b in llm.beam_search([{"prompt": p} for p in PROMPTS], bp)]
        if kw:
            assert llm.llm_engine.get_stats()["num_swapped_out"] > 0
    assert results[True] == results[False]


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_swapped_best_of_samples_equal_no_preemption(path, async_scheduling):
    """Seeded n=3 of best_of=4: the forked sequences share their prompt blocks and are
    swapped as one group (with async scheduling some while a token is in flight)."""
    sp = SamplingParams(n=3, best_of=4, temperature=0.9, seed=5, max_tokens=14, logprobs=1)
    roomy, _ = _run(path, sp, async_scheduling=async_scheduling)
    outs, stats = _run(path, sp, swap_space=0.01, async_scheduling=async_scheduling,
                       num_gpu_blocks_override=24, max_num_batched_tokens=16)
    assert stats["num_swapped_out"] > 0
    _assert_same(outs, roomy)


def test_single_sequences_keep_recompute(path):
    sp = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    roomy, _ = _run(path, sp)
    outs, stats = _run(path, sp, swap_space=0.01, num_gpu_blocks_override=14,
                       max_num_batched_tokens=16)
    assert stats["num_preemptions"] > 0 and stats["num_swapped_out"] == 0
    _assert_same(outs, roomy)


def test_tensor_parallel_ranks_swap_their_shards(path, roomy_beams):
    outs, stats = _run(path, BEAMS, swap_space=0.01, tensor_parallel_size=2, **TIGHT)
    assert stats["num_swapped_out"] > 0
    _assert_same(outs, roomy_beams)


def test_swap_books_keep_sharing_and_counts():
    gpu, cpu = BlockManager(8, 4), BlockManager(8, 4, enable_caching=False)
    group = SequenceGroup("r", None, list(range(10, 16)), SamplingParams(n=2))
    a = Sequence(1, group, group.prompt_token_ids)
    gpu.allocate(a, [], 0)
    gpu.append_slots(a, 6)
    a.num_computed_tokens = 6
    b = a.fork(2, 1)
    gpu.fork(a, b)
    gpu_blocks = list(a.block_table)
    pairs = gpu.swap_out([a, b], cpu, redirect={gpu_blocks[1]: 7})
    assert [g for g, _ in pairs] == [gpu_blocks[0], 7]          # the redirected source
    assert a.block_table == b.block_table and cpu.num_free_blocks == 6
    assert all(cpu.ref_counts[c] == 2 for c in a.block_table)
    assert gpu.num_free_blocks == 8
    back = gpu.swap_in([a, b], cpu)
    assert len(back) == 2 and a.block_table == b.block_table
    assert all(gpu.ref_counts[g] == 2 for g in a.block_table)
    assert cpu.num_free_blocks == 8


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(swap_space=-1), "swap_space must be a number of GiB >= 0, got -1"),
    (dict(swap_space="lots"), "swap_space must be a number"),
    (dict(swap_space=2 * total_cpu_memory() / 2**30), "swap_space=.* more than this machine"),
    (dict(preemption_mode="drop"), "preemption_mode must be 'swap', 'recompute' or None"),
])
def test_bad_swap_arguments(tiny_llama, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LLM(tiny_llama, **kwargs)


@pytest.mark.gpu
def test_gpu_swapped_beams_equal_no_preemption(path):
    """On CUDA the swap space is pinned host memory; Triton kernels and CUDA graphs."""
    kw = dict(device="cuda", kernel_backend="triton")
    roomy, _ = _run(path, BEAMS, **kw)
    outs, stats = _run(path, BEAMS, swap_space=0.01, **TIGHT, **kw)
    assert stats["num_swapped_out"] > 0
    _assert_same(outs, roomy, atol=2e-3)
