"""Automatic prefix caching: the block manager's books (hashes, LRU eviction, reference counts,
copy-on-write of a partly reused block, reset), the scheduler's reuse of cached prefixes
(prefill only the rest, at least one token, prompt-logprob entries from the side store), and
the engine with caching on against caching off and HF transformers (CPU, float32): greedy
tokens equal, logprobs and prompt_logprobs within 1e-5, across shared few-shot prefixes,
prompts that are prefixes of each other, block-boundary lengths, chunked prefill, preemption
in the middle of a shared prefix, n=4 forks, beams, fp8 KV, async scheduling on and off and
tensor_parallel_size=2 on gloo.
"""
from __future__ import annotations

import random

import pytest
import torch

from runner.engine import LLM, BeamSearchParams, SamplingParams
from runner.engine.block_manager import BlockManager
from runner.engine.config import SchedulerConfig
from runner.engine.prefix_cache import ROOT_HASH, extend_block_hashes, hash_block
from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.scheduler import Scheduler
from runner.engine.scheduler_output import ModelRunnerOutput, SampledToken
from runner.engine.sequence import Sequence, SequenceGroup

ATOL = 1e-5
VOCAB = 384


# --------------------------------------------------------------------------- the books
def _seq(tokens, seq_id=1, **params):
    group = SequenceGroup(str(seq_id), None, tokens, SamplingParams(max_tokens=4, **params))
    seq = Sequence(seq_id, group, tokens)
    group.seqs.append(seq)
    return seq


def _fill(bm, seq):
    """Give `seq` cached blocks for its prompt as a finished prefill would."""
    hits = bm.find_cached_prefix(_hashes(seq, bm.block_size))
    bm.allocate(seq, hits, len(hits) * bm.block_size)
    bm.append_slots(seq, seq.num_tokens - seq.num_computed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq, seq.num_tokens)
    return hits


def _hashes(seq, bs):
    extend_block_hashes(seq.block_hashes, seq.token_ids, seq.num_known_tokens, bs)
    return seq.block_hashes


def test_block_hashes_name_whole_prefixes():
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    h1 = hash_block(ROOT_HASH, a)
    assert hash_block(h1, b) != hash_block(ROOT_HASH, b)     # same tokens, other prefix
    assert hash_block(ROOT_HASH, a) == h1
    assert hash_block(ROOT_HASH, a, b"lora-1") != h1          # extra keys count
    hashes = []
    extend_block_hashes(hashes, a + b + [9], 5, 4)           # one full known block
    assert hashes == [h1]
    extend_block_hashes(hashes, a + b + [9], 9, 4)           # incrementally, the same chain
    assert hashes == [h1, hash_block(h1, b)]
    # a trailing placeholder (async scheduling) is not a known token
    seq = _seq(a + b[:3])
    seq.append_placeholder(0, 100)
    assert seq.num_known_tokens == 7 and len(_hashes(seq, 4)) == 1


def test_freed_blocks_stay_cached_until_needed_then_lru():
    bm = BlockManager(8, 4)
    evicted = []
    bm.on_evict = evicted.append
    s1, s2 = _seq(list(range(10, 18)), 1), _seq(list(range(20, 30)), 2)   # 2 and 2.5 blocks
    _fill(bm, s1)
    _fill(bm, s2)
    assert bm.num_cached_blocks == 4 and bm.num_free_blocks == 3
    bm.free(s1)
    bm.free(s2)
    assert bm.num_free_blocks == 8 and bm.num_cached_blocks == 4     # cached, yet free
    # the same prompt again: every full block is a hit, nothing recomputed
    again = _seq(list(range(10, 18)), 3)
    assert bm.find_cached_prefix(_hashes(again, 4)) == [bm.cached[h] for h in _hashes(s1, 4)]
    # taking free blocks: first the ones holding no prefix (never cached), then the least
    # recently freed cached ones, tail blocks of a sequence before its head
    taken = [bm._take() for _ in range(4)]
    assert evicted == []              # 3 never used, and s2's partial last block
    order = []
    while bm.free_queue:
        order.append(bm._take())
    # s1 freed before s2; each sequence tail first: s1[1], s1[0], s2[1], s2[0]
    assert len(evicted) == 4 and bm.num_cached_blocks == 0
    assert evicted[0] == _hashes(s1, 4)[1] and evicted[1] == _hashes(s1, 4)[0]
    assert evicted[2] == _hashes(s2, 4)[1] and evicted[3] == _hashes(s2, 4)[0]
    assert len(set(taken + order)) == 8


def test_hits_count_references_and_survive_a_sharers_free():
    bm = BlockManager(8, 4)
    s1 = _seq(list(range(10, 22)), 1)                     # 3 full blocks
    _fill(bm, s1)
    s2 = _seq(list(range(10, 22)) + [5], 2)
    hits = _fill(bm, s2)
    assert hits == s1.block_table and all(bm.ref_counts[b] == 2 for b in hits)
    assert bm.num_free_blocks == 8 - 4
    bm.free(s1)
    assert all(bm.ref_counts[b] == 1 for b in hits) and bm.num_free_blocks == 4
    bm.free(s2)
    assert bm.num_free_blocks == 8 and not any(bm.ref_counts)
    assert bm.find_cached_prefix(_hashes(s2, 4)) == hits


def test_a_hit_ending_inside_a_block_copies_that_block():
    """All 8 tokens cached: the last one is computed again (its logits sample), into a copy
    of the cached block, which stays cached and unchanged."""
    bm = BlockManager(8, 4)
    s1 = _seq(list(range(10, 18)), 1)
    _fill(bm, s1)
    bm.free(s1)
    s2 = _seq(list(range(10, 18)), 2)
    hits = bm.find_cached_prefix(_hashes(s2, 4))
    assert bm.can_allocate(hits, 7, 1)
    bm.allocate(s2, hits, 7)
    copies = bm.append_slots(s2, 1)
    assert copies == [(hits[1], s2.block_table[1])] and s2.block_table[0] == hits[0]
    assert bm.block_hashes[hits[1]] is not None and bm.ref_counts[hits[1]] == 0
    assert bm.block_hashes[s2.block_table[1]] is None        # the copy is private
    s2.num_computed_tokens = 8
    bm.free(s2)                                              # a duplicate: not registered
    assert bm.cached[_hashes(s2, 4)[1]] == hits[1]


def test_reset_prefix_cache_needs_every_block_free():
    bm = BlockManager(4, 4)
    s = _seq(list(range(10, 18)))
    _fill(bm, s)
    assert not bm.reset_prefix_cache()
    bm.free(s)
    assert bm.reset_prefix_cache()
    assert bm.num_cached_blocks == 0 and bm.find_cached_prefix(_hashes(s, 4)) == []


def test_caching_off_keeps_no_books():
    bm = BlockManager(8, 4, enable_caching=False)
    s = _seq(list(range(10, 18)))
    _fill(bm, s)
    bm.free(s)
    assert bm.num_cached_blocks == 0 and bm.find_cached_prefix(_hashes(s, 4)) == []


# ------------------------------------------------------------------------ the scheduler
def _scheduler(num_blocks=64, bs=4, budget=64, caching=True):
    bm = BlockManager(num_blocks, bs, caching)
    cfg = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=8, max_model_len=256,
                          enable_chunked_prefill=True)
    return Scheduler(cfg, bm), bm


def _add(sched, rid, tokens, **params):
    group = SequenceGroup(str(rid), None, tokens, SamplingParams(max_tokens=2, **params))
    group.seqs.append(Sequence(rid, group, tokens))
    sched.add_seq_group(group)
    return group


def _step(sched, out, prompt_logprob_value=-1.0):
    """A fake forward: prompt-logprob entries (token i's logprob: value * i) and a token for
    every sequence that samples; the scheduler does the rest."""
    result = ModelRunnerOutput()
    for s in out.scheduled:
        spec = s.prompt_logprobs
        if spec is not None:
            result.prompt_logprobs[s.seq_id] = PromptLogprobChunk.from_entries([
                (prompt_logprob_value * (spec.first + 1 + j), 1, [(7, -0.5)][:spec.k])
                for j in range(len(spec.targets))])
        if s.sample is not None:
            result.sampled[s.seq_id] = [SampledToken(7, 0.0, 1, None)]
    sched.on_step_launched(out)
    sched.update_from_output(out, result)


def test_a_cached_prefix_is_not_prefilled_again():
    sched, bm = _scheduler()
    shared = list(range(10, 30))                 # 5 blocks of 4
    _add(sched, 1, shared + [40, 41, 42])
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(0, 23)]
    _step(sched, out)
    _add(sched, 2, shared + [50, 51])
    _add(sched, 3, shared)                       # all cached: its last token is computed
    out = sched.schedule()
    starts = {s.request_id: (s.start, s.num_new_tokens) for s in out.scheduled}
    assert starts["2"] == (20, 2)
    assert starts["3"] == (19, 1)                 # into a copy of the cached last block
    assert len(out.blocks_to_copy) == 1
    stats = sched.prefix_cache_stats
    assert stats["prefix_cache_queries"] == 23 + 22 + 20
    assert stats["prefix_cache_hits"] == 20 + 19


def test_requests_of_one_step_share_blocks_but_copy_none_of_them():
    """Two identical 8-token prompts admitted in one step: the second attends to the blocks
    the first writes in that very step, but cannot copy one of them before it is written, so
    it recomputes the last block instead of the last token."""
    sched, bm = _scheduler()
    _add(sched, 1, list(range(10, 18)))
    _add(sched, 2, list(range(10, 18)))
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(0, 8), (4, 4)]
    assert out.blocks_to_copy == []
    assert out.scheduled[1].block_table[0] == out.scheduled[0].block_table[0]


def test_prompt_logprob_requests_take_stored_entries_or_wait_a_step_for_them():
    sched, bm = _scheduler(budget=64)
    ctx = list(range(10, 42))                    # 8 blocks
    first = _add(sched, 1, ctx + [60, 61, 62, 63], prompt_logprobs=1)
    second = _add(sched, 2, ctx + [70, 71, 72, 73], prompt_logprobs=1)
    out = sched.schedule()
    # the second's context logprobs are computed by the first in this step: it waits
    assert [s.request_id for s in out.scheduled] == ["1"]
    _step(sched, out)
    out = sched.schedule()
    assert [(s.request_id, s.start, s.num_new_tokens) for s in out.scheduled] == [
        ("1", 36, 1), ("2", 31, 5)]               # one token back into the last hit block
    assert len(out.blocks_to_copy) == 1
    assert second.prompt_logprobs[1:32] == first.prompt_logprobs[1:32]
    _step(sched, out, prompt_logprob_value=-2.0)
    assert second.prompt_logprobs[32][0] == -64.0           # computed, not taken
    # a request wanting more alternatives than were stored recomputes them
    _add(sched, 3, ctx + [80], prompt_logprobs=3)
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled if s.request_id == "3"] \
        == [(0, 33)]
    _step(sched, out)
    # ... and one wanting fewer takes them, its top lists cut to its k
    fourth = _add(sched, 4, ctx + [90], prompt_logprobs=0)
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled if s.request_id == "4"] \
        == [(31, 2)]
    assert fourth.prompt_logprobs[5] == (-5.0, 1, [])


def test_a_hold_also_waits_for_entries_older_than_their_block():
    """A block's prompt logprobs are complete one token before the block fills: after the
    first chunk (7 of 10 tokens) block 1's entries exist but its hash is not cached yet; in
    the step that fills it, a request reusing it still waits for them."""
    sched, bm = _scheduler(budget=7)
    ctx = list(range(10, 18))
    _add(sched, 1, ctx + [60, 61], prompt_logprobs=1)
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(0, 7)]
    _step(sched, out)
    second = _add(sched, 2, ctx + [70, 71], prompt_logprobs=1)
    out = sched.schedule()
    assert [(s.request_id, s.start, s.num_new_tokens) for s in out.scheduled] == [("1", 7, 3)]
    _step(sched, out)
    out = sched.schedule()
    assert [(s.request_id, s.start, s.num_new_tokens) for s in out.scheduled
            if s.request_id == "2"] == [("2", 7, 3)]
    assert second.prompt_logprobs[5] == (-5.0, 1, [(7, -0.5)])


def test_evicting_a_block_drops_its_prompt_logprobs():
    sched, bm = _scheduler(num_blocks=12, budget=64)
    ctx = list(range(10, 26))
    _add(sched, 1, ctx + [60], prompt_logprobs=1)
    out = sched.schedule()
    _step(sched, out)
    _step(sched, sched.schedule())
    assert len(sched.kv_cache.logprob_store) == 4
    old = list(bm.cached)
    _add(sched, 2, list(range(100, 147)))        # 12 blocks: every cached one is evicted
    sched.schedule()
    assert len(sched.kv_cache.logprob_store) == 0 and not set(old) & set(bm.cached)


# ------------------------------------------------------------------- the engine vs HF
@pytest.fixture(scope="module")
def hf_cache():
    return {}


def _hf(path, cache):
    from transformers import AutoModelForCausalLM
    if path not in cache:
        cache[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        cache[path].generation_config.eos_token_id = None
    return cache[path]


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def _hf_logprobs(model, ids):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:]).view(-1, 1)).squeeze(1)


def _same_logprobs(xs, ys, atol=ATOL):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert (x is None) == (y is None)
        if x is None:
            continue
        assert x.keys() == y.keys()
        for t in x:
            assert x[t].rank == y[t].rank
            assert abs(x[t].logprob - y[t].logprob) < atol, (x[t], y[t])


def _assert_same(outs, refs, atol=ATOL):
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.prompt_token_ids == r.prompt_token_ids
        _same_logprobs(o.prompt_logprobs or [], r.prompt_logprobs or [], atol)
        assert [c.token_ids for c in o.outputs] == [c.token_ids for c in r.outputs]
        for c, d in zip(o.outputs, r.outputs):
            _same_logprobs(c.logprobs or [], d.logprobs or [], atol)
            assert abs(c.cumulative_logprob - d.cumulative_logprob) < 10 * atol


def _prompts(seed=0, n=6, prefix_len=21, own=(3, 9)):
    """n prompts of one shared few-shot prefix and their own tokens."""
    rng = random.Random(seed)
    shared = [rng.randrange(10, VOCAB) for _ in range(prefix_len)]
    return [{"prompt_token_ids": shared + [rng.randrange(10, VOCAB)
                                           for _ in range(rng.randint(*own))]}
            for _ in range(n)]


def _boundary_prompts():
    """Prompts that are exact prefixes of each other, duplicates, and lengths on and around
    block boundaries (block_size 4)."""
    rng = random.Random(1)
    base = [rng.randrange(10, VOCAB) for _ in range(17)]
    return [{"prompt_token_ids": base[:n]} for n in (16, 8, 17, 16, 4, 12, 15, 16, 1, 9)]


def _run(path, prompts, params, caching, **kw):
    args = dict(dtype="float32", seed=0, block_size=4, max_model_len=96, device="cpu")
    args.update(kw)
    llm = LLM(path, enable_prefix_caching=caching, **args)
    try:
        # twice: the second call finds the first call's blocks cached
        outs = [llm.generate(prompts, params, use_tqdm=False) for _ in range(2)]
        stats = llm.llm_engine.get_stats()
    finally:
        llm.llm_engine.shutdown()
    return outs, stats


GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2,
                        prompt_logprobs=2)


@pytest.mark.parametrize("case", ["few_shot", "boundaries", "chunked", "sync_scheduling"])
def test_caching_on_equals_off_and_hf(tiny_model_factory, hf_cache, case):
    path = tiny_model_factory("llama_gqa")
    prompts = _boundary_prompts() if case == "boundaries" else _prompts()
    kw = {"chunked": dict(max_num_batched_tokens=8),
          "sync_scheduling": dict(async_scheduling=False)}.get(case, {})
    plain = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    params = [GREEDY if i % 2 else plain for i in range(len(prompts))]
    on, stats = _run(path, prompts, params, True, **kw)
    off, off_stats = _run(path, prompts, params, False, **kw)
    assert stats["prefix_cache_hits"] > 0 and off_stats["prefix_cache_hits"] == 0
    assert stats["num_prompt_tokens"] < off_stats["num_prompt_tokens"]
    for a, b in zip(on, off):
        _assert_same(a, b)
    _assert_same(on[1], on[0])
    model = _hf(path, hf_cache)
    for out in on[1]:
        ids = out.prompt_token_ids
        assert out.outputs[0].token_ids == _hf_greedy(model, ids, 8)
        ref = _hf_logprobs(model, ids + out.outputs[0].token_ids)
        got = [lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        assert torch.allclose(torch.tensor(got), ref[len(ids) - 1:], atol=ATOL)
        if out.prompt_logprobs is not None:
            got = [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], ids[1:])]
            assert torch.allclose(torch.tensor(got), ref[:len(ids) - 1], atol=ATOL)


def test_preemption_in_the_middle_of_a_shared_prefix(tiny_model_factory, hf_cache,
                                                     monkeypatch):
    """A 24-block cache and an 8-token budget for 3 requests sharing a 9-token prefix and 3
    sharing a 37-token one: a sequence is preempted while it is still prefilling the long
    prefix, others while they share it, and they come back to find their own and the
    others' blocks cached."""
    path = tiny_model_factory("llama_gqa")
    victims = []
    real = Scheduler._preempt_unit

    def spy(self, seq, *args):
        shared = sum(self.block_manager.ref_counts[b] > 1 for b in seq.block_table)
        victims.append((seq.num_computed_tokens, seq.prompt_len, shared))
        return real(self, seq, *args)

    monkeypatch.setattr(Scheduler, "_preempt_unit", spy)
    prompts = (_prompts(seed=0, n=3, prefix_len=9, own=(6, 9))
               + _prompts(seed=5, n=3, prefix_len=37, own=(3, 5)))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    kw = dict(num_gpu_blocks_override=24, max_num_batched_tokens=8)
    on, stats = _run(path, prompts, params, True, **kw)
    assert stats["num_preemptions"] > 0 and stats["prefix_cache_preempted_hits"] > 0
    assert any(n < 37 and prompt_len >= 40 for n, prompt_len, _ in victims)   # mid-prefix
    assert any(shared for _, _, shared in victims)
    off, _ = _run(path, prompts, params, False, **kw)
    _assert_same(on[0], off[0])
    model = _hf(path, hf_cache)
    for out in on[0]:
        assert out.outputs[0].token_ids == _hf_greedy(model, out.prompt_token_ids, 24)


def test_n4_and_beams_share_cached_prefixes(tiny_model_factory):
    path = tiny_model_factory("llama")
    prompts = _prompts(n=3)
    sampled = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=10, logprobs=1)
    on, stats = _run(path, prompts, sampled, True)
    off, _ = _run(path, prompts, sampled, False)
    assert stats["prefix_cache_hits"] > 0
    for a, b in zip(on, off):
        _assert_same(a, b)
    outs = {}
    for caching in (True, False):
        llm = LLM(path, dtype="float32", block_size=4, max_model_len=96,
                  enable_prefix_caching=caching)
        bp = BeamSearchParams(beam_width=3, max_tokens=10)
        outs[caching] = [[(s.tokens, round(s.cum_logprob, 4)) for s in b.sequences]
                         for b in llm.beam_search(prompts * 2, bp)]
        legacy = SamplingParams(use_beam_search=True, best_of=3, n=2, temperature=0.0,
                                max_tokens=8)
        outs[caching].append([[c.token_ids for c in o.outputs]
                              for o in llm.generate(prompts, legacy, use_tqdm=False)])
        if caching:
            assert llm.llm_engine.get_stats()["prefix_cache_hits"] > 0
    assert outs[True] == outs[False]


def test_fp8_kv_cache_with_prefix_caching(tiny_model_factory):
    path = tiny_model_factory("llama")
    prompts = _prompts()
    on, stats = _run(path, prompts, GREEDY, True, kv_cache_dtype="fp8")
    off, _ = _run(path, prompts, GREEDY, False, kv_cache_dtype="fp8")
    assert stats["prefix_cache_hits"] > 0
    # rounding keys and values to fp8 turns float32's last-bit differences between batch
    # shapes into ~1e-5 ones: the fp8 tests' tolerance (tests/engine/test_kv_cache_dtype.py)
    for a, b in zip(on, off):
        _assert_same(a, b, atol=2e-4)


def test_tensor_parallel_with_prefix_caching(tiny_model_factory):
    """tp=2 on gloo: the block books stay in the driver; the workers only see block tables
    and slot mappings (and the copies of partly reused blocks)."""
    path = tiny_model_factory("llama_gqa")
    prompts = _boundary_prompts()
    tp2, stats = _run(path, prompts, GREEDY, True, tensor_parallel_size=2)
    tp1, _ = _run(path, prompts, GREEDY, False)
    assert stats["prefix_cache_hits"] > 0
    for a, b in zip(tp2, tp1):
        _assert_same(a, b)


def _mc_prompts(num_items=4, context=26, choice=5, seed=2):
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_items):
        ctx = [rng.randrange(10, VOCAB) for _ in range(context)]
        prompts += [{"prompt_token_ids": ctx + [rng.randrange(10, VOCAB) for _ in range(choice)]}
                    for _ in range(4)]
    return prompts


def test_multiple_choice_prompt_logprobs_come_from_the_cache(tiny_model_factory, hf_cache):
    """The multiple-choice workload (4 choices after each item's context, prompt_logprobs,
    max_tokens 1): every prompt position gets its logprob, equal to caching off's, while the
    choices after the first prefill little more than their own tokens."""
    path = tiny_model_factory("llama_gqa")
    prompts = _mc_prompts()
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    kw = dict(max_num_batched_tokens=64)
    on, stats = _run(path, prompts, params, True, **kw)
    off, off_stats = _run(path, prompts, params, False, **kw)
    for a, b in zip(on, off):
        _assert_same(a, b)
    # per item: the first choice's 31 tokens, then for each other choice the tokens after
    # the context's 6 full blocks (one of them recomputed: 8); the second call finds every
    # full block's entries: 4 tokens each
    assert off_stats["num_prompt_tokens"] == 2 * 16 * 31
    assert stats["num_prompt_tokens"] == 4 * (31 + 3 * 8) + 16 * 4
    model = _hf(path, hf_cache)
    for out in on[1]:
        ids = out.prompt_token_ids
        ref = _hf_logprobs(model, ids)
        got = [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], ids[1:])]
        assert torch.allclose(torch.tensor(got), ref, atol=ATOL)


def test_reset_prefix_cache_from_the_llm(tiny_llama):
    llm = LLM(tiny_llama, block_size=4, max_model_len=96)
    prompts = _prompts(n=2)
    sp = SamplingParams(temperature=0, max_tokens=2)
    llm.generate(prompts, sp, use_tqdm=False)
    hits = llm.llm_engine.get_stats()["prefix_cache_hits"]
    assert llm.reset_prefix_cache()
    assert llm.llm_engine.get_stats()["prefix_cache_blocks"] == 0
    llm.generate(prompts[:1], sp, use_tqdm=False)
    assert llm.llm_engine.get_stats()["prefix_cache_hits"] == hits    # nothing to hit
    with pytest.raises(NotImplementedError, match="reset_running_requests"):
        llm.reset_prefix_cache(reset_running_requests=True)


def test_num_cached_tokens_reports_the_hit(tiny_llama):
    """vLLM's RequestOutput.num_cached_tokens: the tokens served by the prefix cache, in whole
    blocks and never the last prompt token; 0 the first time and with caching off."""
    prompt = {"prompt_token_ids": list(range(10, 24))}         # 14 tokens = 3 blocks of 4 + 2
    sp = SamplingParams(temperature=0, max_tokens=2)
    llm = LLM(tiny_llama, block_size=4, max_model_len=96)
    [first] = llm.generate(prompt, sp, use_tqdm=False)
    [again] = llm.generate(prompt, sp, use_tqdm=False)
    longer = {"prompt_token_ids": list(range(10, 26))}         # 16 tokens: 4 full blocks
    [grown] = llm.generate(longer, sp, use_tqdm=False)
    assert (first.num_cached_tokens, again.num_cached_tokens, grown.num_cached_tokens) == (0, 12, 12)
    off = LLM(tiny_llama, block_size=4, max_model_len=96, enable_prefix_caching=False)
    off.generate(prompt, sp, use_tqdm=False)
    assert off.generate(prompt, sp, use_tqdm=False)[0].num_cached_tokens == 0


# ------------------------------------------------------------------------ on the GPU
@pytest.mark.gpu
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_gpu_caching_on_equals_off(tiny_model_factory, kv_cache_dtype):
    """Triton kernels, CUDA graphs for the decode steps, async scheduling, and the fp8 cache:
    the kernels see only block tables and slot mappings, so caching changes nothing but the
    work (tolerance: the GPU's float32 dots sum in batch-dependent orders)."""
    path = tiny_model_factory("llama_gqa")
    kw = dict(device="cuda", kernel_backend="triton", kv_cache_dtype=kv_cache_dtype,
              num_gpu_blocks_override=512)
    prompts = _prompts() + _boundary_prompts() + _mc_prompts()
    params = [GREEDY if i % 3 else SamplingParams(temperature=0, max_tokens=8,
                                                   ignore_eos=True, logprobs=2)
              for i in range(len(prompts))]
    on, stats = _run(path, prompts, params, True, **kw)
    off, _ = _run(path, prompts, params, False, **kw)
    assert stats["prefix_cache_hits"] > 0 and stats["cuda_graph_steps"] > 0
    for a, b in zip(on, off):
        _assert_same(a, b, atol=2e-3)
