"""Scheduler and block manager on CPU with fake model outputs (no model, no torch.cuda).

A fake step appends a made-up token to every sequence that samples; the tests check the token
budget, the sequence limit, chunked prefill, FCFS preemption by recompute, copy-on-write after a
fork, and that every block comes back to the free list.
"""
from __future__ import annotations

import random

from runner.engine.block_manager import BlockManager
from runner.engine.config import SchedulerConfig
from runner.engine.sampling_params import SamplingParams
from runner.engine.scheduler import Scheduler
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus


def make_scheduler(num_blocks=64, block_size=4, max_batched=32, max_seqs=8, chunked=True,
                   max_len=256):
    bm = BlockManager(num_blocks, block_size)
    cfg = SchedulerConfig(max_num_batched_tokens=max_batched, max_num_seqs=max_seqs,
                          max_model_len=max_len, enable_chunked_prefill=chunked)
    return Scheduler(cfg, bm), bm


def add(sched, rid, prompt_len, max_tokens=5, n=1):
    group = SequenceGroup(str(rid), None, list(range(1, prompt_len + 1)),
                          SamplingParams(max_tokens=max_tokens, n=n, temperature=1.0))
    group.seqs.append(Sequence(rid * 100, group, group.prompt_token_ids))
    sched.add_seq_group(group)
    return group


def fake_step(sched, out, token=7):
    """What the engine does after a forward: update, append sampled tokens, finish, free."""
    sched.update(out)
    for s in out.scheduled:
        if s.do_sample:
            s.seq.append_token(token, 0.0)
            if s.seq.num_output_tokens >= s.seq.sampling_params.max_tokens:
                s.seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
    sched.free_finished()


def run_to_end(sched, max_steps=1000, check=None):
    steps = 0
    while sched.has_unfinished_seqs():
        out = sched.schedule()
        if check:
            check(out)
        fake_step(sched, out)
        steps += 1
        assert steps < max_steps
    return steps


def test_budget_and_chunked_prefill():
    sched, bm = make_scheduler(max_batched=10)
    g = add(sched, 1, prompt_len=23)
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens, s.do_sample) for s in out.scheduled] == [(0, 10, False)]
    fake_step(sched, out)
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(10, 10)]
    fake_step(sched, out)
    out = sched.schedule()
    assert [(s.start, s.num_new_tokens, s.do_sample) for s in out.scheduled] == [(20, 3, True)]
    fake_step(sched, out)
    assert g.seqs[0].num_output_tokens == 1
    out = sched.schedule()        # decode: one token
    assert [(s.start, s.num_new_tokens, s.do_sample) for s in out.scheduled] == [(23, 1, True)]


def test_decodes_first_then_prefill_chunk_fills_budget():
    sched, bm = make_scheduler(max_batched=8)
    add(sched, 1, prompt_len=3, max_tokens=10)
    add(sched, 2, prompt_len=3, max_tokens=10)
    fake_step(sched, sched.schedule())            # both prefills fit (6 tokens)
    add(sched, 3, prompt_len=20)
    out = sched.schedule()
    # two decodes (1 token each) and then 6 tokens of the new prompt
    assert [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled] == [
        ("1", 1), ("2", 1), ("3", 6)]
    assert out.num_batched_tokens == 8


def test_no_chunking_waits_for_whole_prompt():
    sched, bm = make_scheduler(max_batched=8, chunked=False)
    add(sched, 1, prompt_len=3, max_tokens=10)
    fake_step(sched, sched.schedule())
    add(sched, 2, prompt_len=8)
    out = sched.schedule()
    assert [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled] == [("1", 1)]


def test_max_num_seqs_counts_future_forks():
    sched, bm = make_scheduler(max_seqs=4)
    add(sched, 1, prompt_len=4, n=3)
    add(sched, 2, prompt_len=4, n=2)
    out = sched.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["1"]   # 3 + 2 slots > 4


def test_preemption_is_fcfs_and_loses_nothing():
    rng = random.Random(0)
    # 20 blocks x 4 tokens: 6 requests of up to 30 tokens each cannot all fit
    sched, bm = make_scheduler(num_blocks=20, block_size=4, max_batched=16, max_seqs=8)
    groups = [add(sched, i, prompt_len=rng.randint(5, 20), max_tokens=10) for i in range(1, 7)]

    def check(out):
        assert out.num_batched_tokens <= 16
        held = [b for s in sched.running for b in s.block_table]
        # no block lost; shared ones (a cached common prefix) counted by their references
        assert len(set(held)) + bm.num_free_blocks == bm.num_blocks
        assert all(bm.ref_counts[b] == held.count(b) for b in set(held))
        for p in out.preempted:   # the victims are the newest running sequences
            assert p.num_computed_tokens == 0 and not p.block_table
            assert p.status == SequenceStatus.WAITING

    run_to_end(sched, check=check)
    assert sched.num_preemptions > 0
    for g in groups:
        seq = g.seqs[0]
        assert seq.output_token_ids == [7] * 10
        assert seq.prompt_token_ids == g.prompt_token_ids
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


def test_fork_shares_blocks_and_copies_last_partial_block_on_write():
    sched, bm = make_scheduler(num_blocks=32, block_size=4)
    g = add(sched, 1, prompt_len=10, n=3, max_tokens=6)
    fake_step_out = sched.schedule()
    sched.update(fake_step_out)
    parent = g.seqs[0]
    parent.append_token(5, 0.0)
    for idx in (1, 2):
        child = parent.fork(100 + idx, idx, None)
        g.seqs.append(child)
        sched.fork(parent, child)
    assert bm.num_free_blocks == 32 - 3                 # 10 tokens -> 3 blocks, shared
    assert all(bm.ref_counts[b] == 3 for b in parent.block_table)
    out = sched.schedule()
    # each of the three writes position 10 in the shared third block: two copy it first
    assert len(out.scheduled) == 3
    assert len(out.blocks_to_copy) == 2
    shared_last = out.blocks_to_copy[0][0]
    assert all(src == shared_last for src, _ in out.blocks_to_copy)
    assert bm.ref_counts[shared_last] == 1
    tables = [s.seq.block_table for s in out.scheduled]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]     # full blocks stay shared
    assert len({t[2] for t in tables}) == 3                    # last blocks are private
    fake_step(sched, out)
    run_to_end(sched)
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


def test_abort_frees_blocks():
    sched, bm = make_scheduler()
    g = add(sched, 1, prompt_len=9)
    add(sched, 2, prompt_len=3)
    fake_step(sched, sched.schedule())
    sched.abort_seq_group(g)
    assert g.seqs[0].status == SequenceStatus.FINISHED_ABORTED
    run_to_end(sched)
    assert bm.num_free_blocks == bm.num_blocks
