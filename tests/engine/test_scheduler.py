"""The scheduler on CPU with fake ModelRunnerOutputs (no model, no torch.cuda).

A fake step samples a made-up token for every sequence whose chunk samples; the scheduler
itself appends it, checks the stop conditions, forks and frees (nothing of that is
re-implemented here). The tests check the token budget, the sequence limit, chunked prefill,
FCFS preemption by recompute, forks and copy-on-write, stop checks (every EOS id, stop ids,
min_tokens, max_tokens, max_model_len), async scheduling's placeholders, beams, that the
SchedulerOutput is plain data, and that every block comes back to the free list.
"""
from __future__ import annotations

import dataclasses
import random

from runner.engine.beam_search import BeamSearchState
from runner.engine.block_manager import BlockManager
from runner.engine.config import SchedulerConfig
from runner.engine.sampling_params import SamplingParams
from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.scheduler import Scheduler
from runner.engine.scheduler_output import (PLACEHOLDER_TOKEN_ID, ModelRunnerOutput,
                                            SampledToken, SchedulerOutput)
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus


def make_scheduler(num_blocks=64, block_size=4, max_batched=32, max_seqs=8, chunked=True,
                   max_len=256, eos=(), async_scheduling=False, caching=True):
    bm = BlockManager(num_blocks, block_size, caching)
    cfg = SchedulerConfig(max_num_batched_tokens=max_batched, max_num_seqs=max_seqs,
                          max_model_len=max_len, enable_chunked_prefill=chunked)
    return Scheduler(cfg, bm, eos, async_scheduling), bm


def add(sched, rid, prompt_len, max_tokens=5, n=1, first=1, **params):
    group = SequenceGroup(str(rid), None, list(range(first, first + prompt_len)),
                          SamplingParams(max_tokens=max_tokens, n=n, temperature=1.0, **params))
    sched.add_seq_group(group)
    return group


def fake_output(out: SchedulerOutput, token=7) -> ModelRunnerOutput:
    """What a model runner returns: a token per sampling index, made-up beam candidates and
    prompt logprobs."""
    result = ModelRunnerOutput()
    for s in out.scheduled:
        if s.prompt_logprobs is not None:
            result.prompt_logprobs[s.seq_id] = PromptLogprobChunk.from_entries(
                [(-1.0, 1, []) for _ in s.prompt_logprobs.targets])
        if s.sample is None:
            continue
        if s.sample.beam is not None:
            k = s.sample.beam.num_candidates
            result.beam_candidates[s.seq_id] = (list(range(20, 20 + k)),
                                                [-0.1 * (j + 1) for j in range(k)])
        else:
            tok = token(s) if callable(token) else token
            result.sampled[s.seq_id] = [SampledToken(tok, -0.5, 1, None)
                                        for _ in s.sample.indices]
    return result


def fake_step(sched, token=7, out=None):
    out = sched.schedule() if out is None else out
    sched.on_step_launched(out)
    return out, sched.update_from_output(out, fake_output(out, token))


def run_to_end(sched, max_steps=1000, check=None, token=7):
    steps = 0
    while sched.has_unfinished_seqs():
        out = sched.schedule()
        if check:
            check(out)
        fake_step(sched, token, out)
        steps += 1
        assert steps < max_steps
    return steps


def test_budget_and_chunked_prefill():
    sched, bm = make_scheduler(max_batched=10)
    g = add(sched, 1, prompt_len=23)
    out, _ = fake_step(sched)
    assert [(s.start, s.num_new_tokens, s.sample is None) for s in out.scheduled] == [
        (0, 10, True)]
    out, _ = fake_step(sched)
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(10, 10)]
    out, groups = fake_step(sched)
    assert [(s.start, s.num_new_tokens, s.sample is not None) for s in out.scheduled] == [
        (20, 3, True)]
    assert groups == [g] and g.seqs[0].output_token_ids == [7]
    out = sched.schedule()        # decode: one token
    assert [(s.start, s.token_ids, s.sample is not None) for s in out.scheduled] == [
        (23, [7], True)]


def test_decodes_first_then_prefill_chunk_fills_budget():
    sched, bm = make_scheduler(max_batched=8)
    add(sched, 1, prompt_len=3, max_tokens=10)
    add(sched, 2, prompt_len=3, max_tokens=10, first=50)
    fake_step(sched)                              # both prefills fit (6 tokens)
    add(sched, 3, prompt_len=20, first=100)
    out = sched.schedule()
    # two decodes (1 token each) and then 6 tokens of the new prompt
    assert [(s.request_id, s.num_new_tokens) for s in out.scheduled] == [
        ("1", 1), ("2", 1), ("3", 6)]
    assert out.num_batched_tokens == 8


def test_no_chunking_waits_for_whole_prompt():
    sched, bm = make_scheduler(max_batched=8, chunked=False)
    add(sched, 1, prompt_len=3, max_tokens=10)
    fake_step(sched)
    add(sched, 2, prompt_len=8, first=50)
    out = sched.schedule()
    assert [(s.request_id, s.num_new_tokens) for s in out.scheduled] == [("1", 1)]


def test_max_num_seqs_counts_future_forks():
    sched, bm = make_scheduler(max_seqs=4)
    add(sched, 1, prompt_len=4, n=3)
    add(sched, 2, prompt_len=4, n=2)
    out = sched.schedule()
    assert [s.request_id for s in out.scheduled] == ["1"]   # 3 + 2 slots > 4


def test_the_output_is_plain_data():
    """No live Sequence crosses to the model runner: ids, token lists, block-table copies."""
    sched, bm = make_scheduler()
    g = add(sched, 1, prompt_len=9, prompt_logprobs=1)
    out = sched.schedule()

    def walk(x):
        assert not isinstance(x, (Sequence, SequenceGroup)), x
        if dataclasses.is_dataclass(x):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
    walk(out)
    s = out.scheduled[0]
    assert (s.seq_id, s.request_id, s.token_ids) == (g.seqs[0].seq_id, "1", list(range(1, 10)))
    assert s.prompt_logprobs.first == 0 and s.prompt_logprobs.targets == list(range(2, 10))
    g.seqs[0].block_table.append(99)
    assert 99 not in s.block_table


def test_preemption_is_fcfs_and_loses_nothing():
    rng = random.Random(0)
    # 20 blocks x 4 tokens: 6 requests of up to 30 tokens each cannot all fit
    sched, bm = make_scheduler(num_blocks=20, block_size=4, max_batched=16, max_seqs=8)
    groups = [add(sched, i, prompt_len=rng.randint(5, 20), max_tokens=10, first=100 * i)
              for i in range(1, 7)]

    def check(out):
        assert out.num_batched_tokens <= 16
        held = [b for s in sched.running for b in s.block_table]
        assert len(set(held)) + bm.num_free_blocks == bm.num_blocks       # no block lost
        assert all(bm.ref_counts[b] == held.count(b) for b in set(held))
        for p in sched.preempted:   # the victims are the newest running sequences
            assert p.num_computed_tokens == 0 and not p.block_table
            assert p.status == SequenceStatus.WAITING

    run_to_end(sched, check=check)
    assert sched.num_preemptions > 0
    for g in groups:
        seq = g.seqs[0]
        assert seq.output_token_ids == [7] * 10
        assert seq.status == SequenceStatus.FINISHED_LENGTH_CAPPED
        assert seq.prompt_token_ids == g.prompt_token_ids
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


def test_first_sample_forks_and_the_last_partial_block_is_copied_on_write():
    sched, bm = make_scheduler(num_blocks=32, block_size=4)
    g = add(sched, 1, prompt_len=10, n=3, max_tokens=6)
    out, _ = fake_step(sched)
    assert out.scheduled[0].sample.indices == (0, 1, 2)       # one row, three draws
    assert [s.index for s in g.seqs] == [0, 1, 2] and g.forked
    parent = g.seqs[0]
    assert bm.num_free_blocks == 32 - 3                 # 10 tokens -> 3 blocks, shared
    assert all(bm.ref_counts[b] == 3 for b in parent.block_table)
    out = sched.schedule()
    # each of the three writes position 10 in the shared third block: two copy it first
    assert sorted(s.sample.indices for s in out.scheduled) == [(0,), (1,), (2,)]
    assert len(out.blocks_to_copy) == 2
    shared_last = out.blocks_to_copy[0][0]
    assert all(src == shared_last for src, _ in out.blocks_to_copy)
    assert bm.ref_counts[shared_last] == 1
    tables = [list(s.block_table) for s in out.scheduled]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]     # full blocks stay shared
    assert len({t[2] for t in tables}) == 3                    # last blocks are private
    fake_step(sched, out=out)
    run_to_end(sched)
    assert all(s.output_token_ids == [7] * 6 for s in g.seqs) and g.is_finished()
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


def test_stop_checks_every_eos_id_stop_ids_min_tokens_and_lengths():
    sched, bm = make_scheduler(eos=(2, 5), max_len=16)
    primary = add(sched, 1, prompt_len=4, max_tokens=9)
    second = add(sched, 2, prompt_len=4, max_tokens=9, first=20)
    ignored = add(sched, 3, prompt_len=4, max_tokens=3, first=40, ignore_eos=True)
    stop_id = add(sched, 4, prompt_len=4, max_tokens=9, first=60, stop_token_ids=[11])
    late = add(sched, 5, prompt_len=4, max_tokens=9, first=80, min_tokens=3)
    capped = add(sched, 6, prompt_len=12, max_tokens=None, first=100)
    tokens = {"1": 2, "2": 5, "3": 2, "4": 11, "5": 5, "6": 9}
    run_to_end(sched, token=lambda s: tokens[s.request_id])
    outcome = {g.request_id: (g.seqs[0].output_token_ids, g.seqs[0].status.finish_reason,
                              g.seqs[0].stop_reason)
               for g in (primary, second, ignored, stop_id, late, capped)}
    assert outcome == {"1": ([2], "stop", None), "2": ([5], "stop", 5),
                       "3": ([2, 2, 2], "length", None), "4": ([11], "stop", 11),
                       "5": ([5, 5, 5], "stop", 5), "6": ([9] * 4, "length", None)}
    assert bm.num_free_blocks == bm.num_blocks


def test_finished_requests_are_reported_to_the_model_runner():
    sched, bm = make_scheduler()
    add(sched, 1, prompt_len=3, max_tokens=1)
    add(sched, 2, prompt_len=3, max_tokens=2, first=30)
    fake_step(sched)
    out = sched.schedule()
    assert out.finished_req_ids == ["1"]
    fake_step(sched, out=out)
    assert sched.schedule().finished_req_ids == ["2"]


def test_async_placeholders_and_no_step_for_a_sequence_its_length_ends():
    sched, bm = make_scheduler(async_scheduling=True)
    g = add(sched, 1, prompt_len=3, max_tokens=2)
    first = sched.schedule()
    assert first.async_sample
    sched.on_step_launched(first)
    seq = g.seqs[0]
    assert seq.token_ids[-1] == PLACEHOLDER_TOKEN_ID and not seq.finishing
    second = sched.schedule()                       # scheduled before the first is read
    s = second.scheduled[0]
    assert s.token_ids == [PLACEHOLDER_TOKEN_ID] and s.placeholder_step == first.step_id
    sched.update_from_output(first, fake_output(first, 9))
    assert seq.token_ids[-1] == 9 and seq.placeholder_step is None
    sched.on_step_launched(second)
    assert seq.finishing                            # its placeholder is its last token
    assert sched.schedule().scheduled == []
    sched.update_from_output(second, fake_output(second, 8))
    assert seq.output_token_ids == [9, 8] and seq.is_finished()
    assert bm.num_free_blocks == bm.num_blocks
    # forks, beams and prompt logprobs need their tokens at once: no async sample
    add(sched, 2, prompt_len=3, n=2, first=30)
    assert not sched.schedule().async_sample


def test_beam_steps_fork_and_finish_in_the_scheduler():
    sched, bm = make_scheduler()
    group = SequenceGroup("b", None, list(range(1, 7)), SamplingParams(n=2, max_tokens=3))
    group.beam = BeamSearchState(beam_width=2, length_penalty=1.0, early_stopping=False,
                                 max_tokens=3, eos_token_ids=[])
    group.num_seqs = 2
    sched.add_seq_group(group)
    run_to_end(sched)
    assert group.is_finished() and len(group.beam_results) == 2
    assert all(len(h.token_ids) == 3 for h in group.beam_results)
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


def test_abort_frees_blocks():
    sched, bm = make_scheduler()
    g = add(sched, 1, prompt_len=9)
    add(sched, 2, prompt_len=3, first=50)
    fake_step(sched)
    sched.abort_seq_group(g)
    assert g.seqs[0].status == SequenceStatus.FINISHED_ABORTED
    run_to_end(sched)
    assert bm.num_free_blocks == bm.num_blocks
