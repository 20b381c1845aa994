"""The scheduler: every admission, chunking, preemption, stop, fork and free decision.

One step, seen from here:

    schedule() -> SchedulerOutput            (plain data: runner/engine/scheduler_output.py)
    on_step_launched(out)                    its forward is running: positions count as computed
    update_from_output(out, ModelRunnerOutput) -> the requests that progressed
                                             append tokens, stop checks, forks, beams, frees

`schedule` spends one budget, `max_num_batched_tokens` tokens and `max_num_seqs` sequence
slots. Running sequences go first, oldest first: a decoding sequence takes one token, a
sequence still in its (chunked) prefill takes as many of its remaining tokens as the budget
allows. Then waiting sequences are admitted, oldest first, while tokens, slots and KV blocks
last; each first takes the longest cached prefix it finds (automatic prefix caching:
runner/engine/kv_cache_manager.py) and prefills only the rest, and with chunked prefill the
last one admitted may take only part of its prompt. There are no separate prefill and decode
phases.

When a running sequence needs a block and none is free, the newest running sequence is
preempted, with the rest of its unit (the live beams of a beam search, or the sequences of a
best_of / n > 1 request that swaps). A unit of several sequences is swapped out (vLLM's
preemption_mode "swap", the default for them; not with "recompute", nor when the swap space
is full): its KV blocks go to the CPU swap space and it waits in the swapped queue, to come
back with its blocks before any waiting request is admitted. Otherwise it is preempted by
recompute: its blocks are freed (its computed full blocks stay in the prefix cache) and it
goes back to the front of the waiting queue with all its tokens (prompt and generated) to be
computed again. Either way nothing it generated is lost or changed.

Async scheduling (vLLM's; on unless async_scheduling=False): a step whose samples need no host
work at once (no fork, beam or prompt logprobs) is marked `async_sample`: its tokens stay on
the device until after the next step is launched. `on_step_launched` gives each sequence that
sampled a placeholder token; the next schedule counts it like any token (the model runner
takes its input id from the device), except that a sequence whose placeholder surely ends it
(its length limit) gets no step; `update_from_output` fills it in once read back. A sequence
that the unread token ended has computed one more position, which is dropped.

Stop checks here are the token ones (EOS ids, stop_token_ids, max_tokens, max_model_len); a
stop string is found by the output processor, which then calls `stop_seq`.

This module imports no torch.cuda: it is tested on CPU with fake ModelRunnerOutputs.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

from runner.engine.beam_search import advance_beams
from runner.engine.block_manager import BlockManager
from runner.engine.config import SchedulerConfig
from runner.engine.kv_cache_manager import HOLD, KVCacheManager
from runner.engine.sched_utils import check_stop, scheduled_seq
from runner.engine.scheduler_output import (ModelRunnerOutput, SampledToken, ScheduledSeq,
                                            SchedulerOutput)
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus


@dataclass(slots=True)
class _Chunk:
    seq: Sequence
    start: int              # seq.num_computed_tokens when scheduled
    num_new_tokens: int     # this step computes tokens [start, start + num_new_tokens)


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, block_manager: BlockManager,
                 eos_token_ids: tuple[int, ...] = (), async_scheduling: bool = False,
                 cpu_block_manager: Optional[BlockManager] = None):
        self.config = scheduler_config
        self.block_manager = block_manager
        self.cpu_block_manager = cpu_block_manager        # the swap space's books
        self.kv_cache = KVCacheManager(block_manager)
        self.eos_token_ids = tuple(eos_token_ids)
        self.async_scheduling = async_scheduling
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.swapped: deque[list[Sequence]] = deque()    # preempted units, blocks on CPU
        self.seqs: dict[int, Sequence] = {}       # every live sequence, by id
        self.num_swapped_out = self.num_swapped_in = 0    # sequences
        self.preempted: list[Sequence] = []       # by the last schedule()
        self.num_preemptions = 0
        self.num_prompt_tokens = 0                # computed, chunk by chunk
        self.num_generation_tokens = 0
        self._ids = itertools.count(1)
        self._step_ids = itertools.count(1)
        self._finished_req_ids: list[str] = []    # for the model runner's next step

    @property
    def prefix_cache_stats(self) -> dict:
        return self.kv_cache.stats

    # --------------------------------------------------------------- requests
    def _new_id(self) -> int:
        seq_id = next(self._ids)
        while seq_id in self.seqs:
            seq_id = next(self._ids)
        return seq_id

    def add_seq_group(self, group: SequenceGroup) -> None:
        """Queue a request (its first sequence is made here unless it has one)."""
        width = group.beam.beam_width if group.beam is not None else group.num_seqs
        if width > self.config.max_num_seqs:
            raise ValueError(f"the request needs {width} sequences at once (n, best_of or beam "
                             f"width), more than max_num_seqs={self.config.max_num_seqs}; raise "
                             "max_num_seqs or lower it.")
        if not group.seqs:
            group.seqs.append(Sequence(self._new_id(), group, group.prompt_token_ids))
        for seq in group.seqs:
            seq.status = SequenceStatus.WAITING
            self.seqs[seq.seq_id] = seq
            self.waiting.append(seq)

    def has_unfinished_seqs(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def abort_seq_group(self, group: SequenceGroup) -> None:
        for seq in group.seqs:
            if seq.is_finished():
                continue
            on_cpu = self._dequeue(seq)
            seq.status = SequenceStatus.FINISHED_ABORTED
            self._release(seq, on_cpu)

    def _dequeue(self, seq: Sequence) -> bool:
        """Take `seq` out of whichever queue holds it; returns whether its blocks are in the
        swap space."""
        for unit in self.swapped:
            if seq in unit:
                unit.remove(seq)
                if not unit:
                    self.swapped.remove(unit)
                return True
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        return False

    def stop_seq(self, seq: Sequence, stop_reason: str) -> None:
        """A stop string ended `seq` (found by the output processor): it stops now, whatever
        its tokens decided (a stop string beats the length limit)."""
        if seq.seq_id in self.seqs:
            on_cpu = self._dequeue(seq)
            seq.status = SequenceStatus.FINISHED_STOPPED
            seq.stop_reason = stop_reason
            self._release(seq, on_cpu)
        else:
            seq.status = SequenceStatus.FINISHED_STOPPED
            seq.stop_reason = stop_reason

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache.reset_prefix_cache()

    # --------------------------------------------------------------- schedule
    def _seq_slots(self, seq: Sequence) -> int:
        """Slots a sequence will hold: a request with n > 1 (or best_of, or beams) forks after
        its first sample."""
        group = seq.group
        if group.forked:
            return 1
        return group.beam.beam_width if group.beam is not None else group.num_seqs

    def _swaps(self, group: SequenceGroup) -> bool:
        """Whether a preempted unit of this request goes to the swap space: groups of
        several sequences (best_of > 1, beams), unless preemption_mode='recompute'."""
        return (self.cpu_block_manager is not None and self.config.preemption_mode != "recompute"
                and (group.beam is not None or group.num_seqs > 1))

    def _unit(self, seq: Sequence) -> list[Sequence]:
        """What is preempted and brought back together: the live beams of a beam-search
        request (each step waits for all of them, so a lone beam could never progress), the
        sequences of a request that swaps (they share blocks), else the sequence alone."""
        group = seq.group
        if group.beam is None and not (group.forked and self._swaps(group)):
            return [seq]
        return [s for s in group.seqs if not s.is_finished()]

    def _preempt_unit(self, seq: Sequence, chunks: list[_Chunk], out: SchedulerOutput,
                      copies: dict) -> int:
        """Preempt `seq`'s unit, by swap or by recompute; returns the tokens it gives back to
        the budget. `copies`: the copy-on-write pairs each sequence took this step (not run
        for a preempted one)."""
        refund = 0
        unit = [s for s in self._unit(seq) if s.status == SequenceStatus.RUNNING]
        redirect = {}
        for s in unit:
            for j, c in enumerate(chunks):
                if c.seq is s:
                    refund += c.num_new_tokens
                    del chunks[j]
                    break
            for src, dst in copies.pop(id(s), ()):
                out.blocks_to_copy.remove((src, dst))
                redirect[dst] = src
            self.running.remove(s)
            s.num_preemptions += 1
            self.preempted.append(s)
            self.num_preemptions += 1
        bm, cpu = self.block_manager, self.cpu_block_manager
        if self._swaps(seq.group) and bm.num_distinct_blocks(unit) <= cpu.num_free_blocks:
            out.blocks_to_swap_out += bm.swap_out(unit, cpu, redirect)
            for s in unit:
                s.status = SequenceStatus.SWAPPED
            self.swapped.append(unit)
            self.num_swapped_out += len(unit)
            return refund
        for s in reversed(unit):              # appendleft in reverse keeps their order
            bm.free(s)
            s.num_computed_tokens = 0
            s.status = SequenceStatus.WAITING
            s.beam_candidates = None          # recomputed with the sequence
            self.waiting.appendleft(s)
        return refund

    def _swap_in(self, chunks: list[_Chunk], out: SchedulerOutput, budget: int) -> int:
        """Bring swapped-out units back, oldest first, while their blocks (and a block each
        for the step after) and sequence slots last; they go on from where they stopped.
        Returns the budget left."""
        bm, cpu = self.block_manager, self.cpu_block_manager
        used_slots = sum(self._seq_slots(s) for s in self.running)
        loras = self._running_loras()
        while self.swapped and budget > 0:
            unit = self.swapped[0]
            need = bm.num_distinct_blocks(unit) + len(unit)
            if need > bm.num_free_blocks or used_slots + len(unit) > self.config.max_num_seqs:
                break
            lora = unit[0].group.lora_request
            if loras is not None and lora is not None and lora.lora_int_id not in loras:
                if len(loras) >= self.config.max_loras:
                    break                     # its adapter waits for a free slot
                loras.add(lora.lora_int_id)
            self.swapped.popleft()
            out.blocks_to_swap_in += bm.swap_in(unit, cpu)
            self.num_swapped_in += len(unit)
            for s in unit:
                s.status = SequenceStatus.RUNNING
                self.running.append(s)
                used_slots += 1
                k = min(s.num_uncomputed_tokens, budget)
                if k > 0 and bm.can_append(s, k):
                    out.blocks_to_copy += bm.append_slots(s, k)
                    chunks.append(_Chunk(s, s.num_computed_tokens, k))
                    budget -= k
        return budget

    def _newest_victim(self, seq: Sequence, visited: set[int]) -> Sequence | None:
        """The newest running sequence not yet scheduled this step and not in `seq`'s unit."""
        unit = {id(s) for s in self._unit(seq)}
        for cand in reversed(self.running):
            if id(cand) in visited:
                return None                   # everything older is already scheduled
            if id(cand) not in unit:
                return cand
        return None

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        bm, kv = self.block_manager, self.kv_cache
        kv.begin_step()
        out = SchedulerOutput(step_id=next(self._step_ids),
                              finished_req_ids=self._finished_req_ids)
        self._finished_req_ids = []
        self.preempted = []
        chunks: list[_Chunk] = []

        # 1. running sequences, oldest first; preempt from the newest end when blocks run out
        visited: set[int] = set()
        copies: dict[int, list] = {}          # copy-on-write pairs taken, by sequence
        block_size, ref_counts, block_hashes = bm.block_size, bm.ref_counts, bm.block_hashes
        running_status = SequenceStatus.RUNNING
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq.status != running_status or seq.finishing:
                continue                      # preempted earlier in this loop / ends anyway
            visited.add(id(seq))
            pos = seq.num_computed_tokens
            k = min(len(seq.token_ids) - pos, budget)
            if k == 0:                        # a beam waiting for its siblings' candidates
                continue
            if k == 1:
                # the common decode step: its slot is in a block it already owns alone
                table = seq.block_table
                i = pos // block_size
                if i < len(table) and ref_counts[table[i]] == 1 and \
                        block_hashes[table[i]] is None:
                    chunks.append(_Chunk(seq, pos, 1))
                    budget -= 1
                    continue
            while not bm.can_append(seq, k):
                victim = self._newest_victim(seq, visited)
                if victim is None:            # seq's unit is the newest: it goes back
                    budget += self._preempt_unit(seq, chunks, out, copies)
                    break
                budget += self._preempt_unit(victim, chunks, out, copies)
            if seq.status != SequenceStatus.RUNNING:
                continue
            taken = bm.append_slots(seq, k)
            if taken:
                copies[id(seq)] = taken
                out.blocks_to_copy += taken
            chunks.append(_Chunk(seq, seq.num_computed_tokens, k))
            budget -= k
        # the blocks the surviving running sequences fill this step are cached from now on
        # (not earlier: a sequence preempted above computes nothing)
        if kv.enable_caching:
            for c in chunks:
                if (c.start + c.num_new_tokens) // block_size > c.seq.num_cached_blocks:
                    kv.cache_scheduled(c.seq, c.start + c.num_new_tokens)

        # 2. swapped-out units come back, then 3. waiting sequences are admitted; neither
        # when this step had to preempt (memory is tight), and no admission before every
        # swapped unit is back (they are older)
        if not self.preempted:
            if self.swapped:
                budget = self._swap_in(chunks, out, budget)
            if not self.swapped:
                self._admit(chunks, out, budget)

        if not chunks and (self.waiting or self.swapped) and not any(
                s.num_uncomputed_tokens for s in self.running):
            seq = self.waiting[0] if self.waiting else self.swapped[0][0]
            raise RuntimeError(
                f"cannot schedule {seq}: it needs {bm.num_blocks_needed(seq, 1)} KV blocks and "
                f"the cache has {bm.num_blocks} in all; raise num_gpu_blocks_override / "
                "gpu_memory_utilization or lower max_model_len.")
        now = time.time()
        out.scheduled = [self._plain(c, now) for c in chunks]
        if self.config.max_loras is not None:
            out.lora_requests = {r.lora_int_id: r for r in (
                c.seq.group.lora_request for c in chunks) if r is not None}
        # (a structured request's next mask needs this step's token: no async step for it)
        out.async_sample = self.async_scheduling and all(
            s.prompt_logprobs is None and (s.sample is None or (
                s.sample.beam is None and len(s.sample.indices) == 1
                and s.sample.params.structured_outputs is None)) for s in out.scheduled)
        return out

    def _admit(self, chunks: list[_Chunk], out: SchedulerOutput, budget: int) -> None:
        kv = self.kv_cache
        used_slots = sum(self._seq_slots(s) for s in self.running)
        held: list[Sequence] = []
        loras = self._running_loras()
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            lora = seq.group.lora_request
            if loras is not None and lora is not None and lora.lora_int_id not in loras:
                if len(loras) >= self.config.max_loras:
                    # a step holds at most max_loras adapters: it waits for a free one, and
                    # requests behind it with adapters of running ones (or none) go first
                    held.append(self.waiting.popleft())
                    continue
                loras.add(lora.lora_int_id)
            if seq.group.beam is not None and seq.group.forked:
                admitted, budget = self._admit_beam_unit(seq, chunks, out, budget, used_slots)
                if not admitted:
                    break
                used_slots += admitted
                continue
            hit = kv.get_computed_blocks(seq)
            if hit is HOLD:                   # its cached prefix's logprobs come this step
                held.append(self.waiting.popleft())
                continue
            need = seq.num_tokens - hit[1]
            k = min(need, budget)
            if k < need and not self.config.enable_chunked_prefill:
                break
            slots = self._seq_slots(seq)
            if used_slots + slots > self.config.max_num_seqs:
                break
            if not kv.can_allocate(hit, k):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            used_slots += slots
            kv.allocate(seq, hit)
            budget -= self._take(seq, k, chunks, out)
        self.waiting.extendleft(reversed(held))

    def _running_loras(self) -> Optional[set]:
        """The adapter ids of the running sequences (None when LoRA is off)."""
        if self.config.max_loras is None:
            return None
        return {s.group.lora_request.lora_int_id for s in self.running
                if s.group.lora_request is not None}

    def _take(self, seq: Sequence, k: int, chunks: list[_Chunk], out: SchedulerOutput) -> int:
        """Slots for an admitted sequence's next k tokens; returns k."""
        if k > 0:
            out.blocks_to_copy += self.block_manager.append_slots(seq, k)
            chunks.append(_Chunk(seq, seq.num_computed_tokens, k))
            self.kv_cache.cache_scheduled(seq, seq.num_computed_tokens + k)
        return k

    def _admit_beam_unit(self, seq: Sequence, chunks: list[_Chunk], out: SchedulerOutput,
                         budget: int, used_slots: int) -> tuple[int, int]:
        """Readmit a preempted beam-search request: all its beams or none. Returns (slots
        taken, budget left); (0, budget) when it does not fit yet."""
        bm = self.block_manager
        unit = []
        for s in self.waiting:
            if s.group is not seq.group:
                break
            unit.append(s)
        blocks = sum(-(-s.num_tokens // bm.block_size) for s in unit)
        if blocks > bm.num_blocks:
            raise RuntimeError(
                f"beam search request {seq.request_id!r} needs {blocks} KV blocks to recompute "
                f"its {len(unit)} beams, more than the cache's {bm.num_blocks}; raise "
                "num_gpu_blocks_override / gpu_memory_utilization or lower the beam width.")
        if blocks > bm.num_free_blocks or used_slots + len(unit) > self.config.max_num_seqs:
            return 0, budget
        bs = bm.block_size
        for s in unit:
            self.waiting.popleft()
            s.status = SequenceStatus.RUNNING
            self.running.append(s)
            # a cached prefix in whole blocks only: no beam copies a block, so the unit takes
            # at most `blocks` (forked beams' prompt logprobs are done: nothing to hold for)
            hits, num_hit, _ = self.kv_cache.get_computed_blocks(s) or ([], 0, None)
            num_hit -= num_hit % bs
            self.kv_cache.allocate(s, (hits[:num_hit // bs], num_hit, None))
            budget -= self._take(s, min(s.num_uncomputed_tokens, budget), chunks, out)
        return len(unit), budget

    # ------------------------------------------------------------ plain output
    def _plain(self, c: _Chunk, now: float) -> ScheduledSeq:
        seq = c.seq
        if seq.group.metrics.first_scheduled_time is None:
            seq.group.maybe_set_first_scheduled(now)
        if c.start < seq.prompt_len:
            self.num_prompt_tokens += c.num_new_tokens
        return scheduled_seq(seq, c.start, c.num_new_tokens)

    # ----------------------------------------------------------------- update
    def on_step_launched(self, out: SchedulerOutput) -> None:
        """The step's forward pass is running: its positions count as computed, and with
        async_sample each sequence that samples gets a placeholder for its token."""
        max_len = self.config.max_model_len
        get, async_sample, step_id = self.seqs.get, out.async_sample, out.step_id
        for s in out.scheduled:
            seq = get(s.seq_id)
            if seq is None:                   # ended by the step before, read meanwhile
                continue
            seq.num_computed_tokens = s.start + len(s.token_ids)
            if async_sample and s.sample is not None and not seq.is_finished():
                max_tokens = s.sample.params.max_tokens
                limit = max_len if max_tokens is None else min(max_len,
                                                               seq.prompt_len + max_tokens)
                seq.append_placeholder(step_id, limit)

    def update_from_output(self, out: SchedulerOutput,
                           runner_out: ModelRunnerOutput) -> list[SequenceGroup]:
        """Apply a step's results: prompt logprobs, tokens (forking n > 1 requests at their
        first sample), stop checks, beam steps, frees. Returns the requests that progressed,
        in schedule order."""
        progressed: dict[str, SequenceGroup] = {}
        beam_groups: dict[str, SequenceGroup] = {}
        ended_preempted = []
        now = time.time()
        # (every scheduled sequence, every step: the lookups are hoisted)
        get, sampled = self.seqs.get, runner_out.sampled
        prompt_logprobs, beam_candidates = runner_out.prompt_logprobs, runner_out.beam_candidates
        running = SequenceStatus.RUNNING
        for s in out.scheduled:
            seq = get(s.seq_id)
            if seq is None or seq.is_finished():      # aborted while its step was in flight
                continue
            group = seq.group
            if prompt_logprobs:
                entries = prompt_logprobs.get(s.seq_id)
                if entries:
                    group.prompt_logprobs.extend(entries)
                    self.kv_cache.store_prompt_logprobs(group)
            if beam_candidates:
                cands = beam_candidates.get(s.seq_id)
                if cands is not None:
                    seq.beam_candidates = cands
                    beam_groups[group.request_id] = group
                    continue
            tokens = sampled.get(s.seq_id)
            if not tokens:
                continue
            progressed[group.request_id] = group
            metrics = group.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            # (preempted while its token was in flight: waiting or swapped)
            was_preempted = seq.status != running
            if len(s.sample.indices) > 1:
                group.forked = True
                for idx, tok in zip(s.sample.indices[1:], tokens[1:]):
                    self._append(self._fork(seq, idx, into_group=True), tok)
            self._append(seq, tokens[0])
            if was_preempted and seq.is_finished():
                ended_preempted.append(seq)
        for group in beam_groups.values():
            live = [q for q in group.seqs if not q.is_finished()]
            if all(q.beam_candidates is not None for q in live):
                if group.metrics.first_token_time is None:
                    group.metrics.first_token_time = now
                group.metrics.last_token_time = now
                self.num_generation_tokens += len(live)
                advance_beams(group, live, lambda parent: self._fork(parent, 0, False))
                progressed[group.request_id] = group
        for seq in ended_preempted:
            self._release(seq, self._dequeue(seq))
        self._free_finished()
        return list(progressed.values())

    def _fork(self, parent: Sequence, index: int, into_group: bool) -> Sequence:
        """A running child of running `parent`, sharing its blocks, right after it."""
        child = parent.fork(self._new_id(), index)
        if into_group:
            parent.group.seqs.append(child)
        self.block_manager.fork(parent, child)
        child.status = SequenceStatus.RUNNING
        self.running.insert(self.running.index(parent) + 1, child)
        self.seqs[child.seq_id] = child
        return child

    def _append(self, seq: Sequence, tok: SampledToken) -> None:
        if seq.placeholder_step is not None:
            seq.fill_placeholder(tok.token_id, tok.logprob)
        else:
            seq.append_token(tok.token_id, tok.logprob)
        self.num_generation_tokens += 1
        if seq.group.sampling_params.logprobs is not None:
            seq.sampled_logprobs.append(tok)
        check_stop(seq, tok.token_id, self.eos_token_ids, self.config.max_model_len)

    def _free_finished(self) -> None:
        keep = []
        for seq in self.running:
            if seq.is_finished():
                self._release(seq)
            else:
                keep.append(seq)
        self.running = keep

    def _release(self, seq: Sequence, on_cpu: bool = False) -> None:
        """A finished sequence gives its blocks back (to the swap space when they are there);
        its request, once every sequence of it is done, is reported to the model runner with
        the next step."""
        (self.cpu_block_manager if on_cpu else self.block_manager).free(seq)
        self.seqs.pop(seq.seq_id, None)
        group = seq.group
        if group.is_finished() and not any(s.seq_id in self.seqs for s in group.seqs):
            self._finished_req_ids.append(group.request_id)
