"""The scheduler: every admission, chunking and preemption decision, under one token budget.

Each step gets `max_num_batched_tokens` tokens and `max_num_seqs` sequence slots. Running
sequences go first, oldest first: a decoding sequence takes one token, a sequence still in its
(chunked) prefill takes as many of its remaining prompt tokens as the budget allows. Then waiting
sequences are admitted, oldest first, while tokens, slots and KV blocks last; with chunked
prefill the last one admitted may take only part of its prompt. There are no separate prefill and
decode phases.

When a running sequence needs a block and none is free, the newest running sequence is preempted
by recompute: its blocks are freed and it goes back to the front of the waiting queue with all
its tokens (prompt and generated) to be computed again. Nothing it generated is lost or changed.

With async scheduling a sequence may end in a placeholder token (runner/engine/sequence.py): it
is scheduled like any other, except one whose placeholder surely ends it (`finishing`), which
gets no step; the engine frees it once the token is read back.

This module imports no torch.cuda: it is tested on CPU with fake model outputs.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runner.engine.block_manager import BlockManager, cdiv
from runner.engine.config import SchedulerConfig
from runner.engine.prefix_cache import PromptLogprobStore, extend_block_hashes
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus


@dataclass(slots=True)
class ScheduledSequence:
    seq: Sequence
    start: int              # seq.num_computed_tokens when scheduled
    num_new_tokens: int     # this step computes tokens [start, start + num_new_tokens)

    @property
    def do_sample(self) -> bool:
        """True when this chunk reaches the end of the sequence, so its last logits sample."""
        return self.start + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, block_manager: BlockManager):
        self.config = scheduler_config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.logprob_store = PromptLogprobStore(block_manager.block_size)
        block_manager.on_evict = self.logprob_store.drop
        # prefix cache hits, in tokens (vLLM's counters): of first admissions, and of
        # sequences admitted again after a preemption
        self.prefix_cache_stats = {"prefix_cache_queries": 0, "prefix_cache_hits": 0,
                                   "prefix_cache_preempted_queries": 0,
                                   "prefix_cache_preempted_hits": 0}

    # --------------------------------------------------------------- requests
    def add_seq_group(self, group: SequenceGroup) -> None:
        width = group.beam.beam_width if group.beam is not None else group.num_seqs
        if width > self.config.max_num_seqs:
            raise ValueError(f"the request needs {width} sequences at once (n, best_of or beam "
                             f"width), more than max_num_seqs={self.config.max_num_seqs}; raise "
                             "max_num_seqs or lower it.")
        for seq in group.seqs:
            seq.status = SequenceStatus.WAITING
            self.waiting.append(seq)

    def has_unfinished_seqs(self) -> bool:
        return bool(self.waiting or self.running)

    def abort_seq_group(self, group: SequenceGroup) -> None:
        for seq in group.seqs:
            if seq.is_finished():
                continue
            if seq in self.waiting:
                self.waiting.remove(seq)
            if seq in self.running:
                self.running.remove(seq)
            self.block_manager.free(seq)
            seq.status = SequenceStatus.FINISHED_ABORTED

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Register `child` (a fork of running `parent`) as running right after it."""
        self.block_manager.fork(parent, child)
        child.status = SequenceStatus.RUNNING
        self.running.insert(self.running.index(parent) + 1, child)

    # --------------------------------------------------------------- schedule
    def _seq_slots(self, seq: Sequence) -> int:
        """Slots a sequence will hold: a request with n > 1 (or best_of, or beams) forks after
        its first sample."""
        group = seq.group
        if group.forked:
            return 1
        return group.beam.beam_width if group.beam is not None else group.num_seqs

    def _unit(self, seq: Sequence) -> list[Sequence]:
        """What is preempted and admitted together: the live beams of a beam-search request
        (each step waits for all of them, so a lone beam could never progress), else the
        sequence alone."""
        if seq.group.beam is None:
            return [seq]
        return [s for s in seq.group.seqs if not s.is_finished()]

    def _preempt_unit(self, seq: Sequence, out: SchedulerOutput) -> int:
        """Preempt `seq`'s unit by recompute; returns the tokens it gives back to the budget."""
        refund = 0
        unit = [s for s in self._unit(seq) if s.status == SequenceStatus.RUNNING]
        for s in reversed(unit):              # appendleft in reverse keeps their order
            for j, sched in enumerate(out.scheduled):
                if sched.seq is s:
                    refund += sched.num_new_tokens
                    del out.scheduled[j]
                    break
            self.running.remove(s)
            self.block_manager.free(s)
            s.num_computed_tokens = 0
            s.num_preemptions += 1
            s.status = SequenceStatus.WAITING
            s.beam_candidates = None          # recomputed with the sequence
            self.waiting.appendleft(s)
            out.preempted.append(s)
            self.num_preemptions += 1
        return refund

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
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager
        bm.begin_step()
        self.logprob_store.begin_step()

        # 1. running sequences, oldest first; preempt from the newest end when blocks run out
        visited: set[int] = set()
        block_size, ref_counts, block_hashes = bm.block_size, bm.ref_counts, bm.block_hashes
        running_status = SequenceStatus.RUNNING
        scheduled = out.scheduled
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
                    scheduled.append(ScheduledSequence(seq, pos, 1))
                    budget -= 1
                    continue
            while not bm.can_append(seq, k):
                victim = self._newest_victim(seq, visited)
                if victim is None:            # seq's unit is the newest: it goes back
                    budget += self._preempt_unit(seq, out)
                    break
                budget += self._preempt_unit(victim, out)
            if seq.status != SequenceStatus.RUNNING:
                continue
            out.blocks_to_copy += bm.append_slots(seq, k)
            out.scheduled.append(ScheduledSequence(seq, seq.num_computed_tokens, k))
            budget -= k

        # the blocks the surviving running sequences fill this step are cached from now on
        # (not earlier: a sequence preempted above computes nothing)
        for sched in scheduled:
            self._cache_scheduled(sched)

        # 2. admit waiting sequences, unless this step had to preempt (memory is tight)
        if not out.preempted:
            used_slots = sum(self._seq_slots(s) for s in self.running)
            held: list[Sequence] = []
            while self.waiting and budget > 0:
                seq = self.waiting[0]
                if seq.group.beam is not None and seq.group.forked:
                    admitted, budget = self._admit_beam_unit(seq, out, budget, used_slots)
                    if not admitted:
                        break
                    used_slots += admitted
                    continue
                hit = self._prefix_hit(seq)
                if hit is None:              # its cached prefix's logprobs come this step
                    held.append(self.waiting.popleft())
                    continue
                blocks, num_hit, served = hit
                need = seq.num_tokens - num_hit
                k = min(need, budget)
                if k < need and not self.config.enable_chunked_prefill:
                    break
                slots = self._seq_slots(seq)
                if used_slots + slots > self.config.max_num_seqs:
                    break
                if not bm.can_allocate(blocks, num_hit, k):
                    break
                self.waiting.popleft()
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
                used_slots += slots
                self._allocate(seq, blocks, num_hit, served)
                out.blocks_to_copy += bm.append_slots(seq, k)
                sched = ScheduledSequence(seq, seq.num_computed_tokens, k)
                out.scheduled.append(sched)
                self._cache_scheduled(sched)
                budget -= k
            self.waiting.extendleft(reversed(held))

        if out.is_empty and self.waiting and not any(
                s.num_uncomputed_tokens for s in self.running):
            seq = self.waiting[0]
            raise RuntimeError(
                f"cannot schedule {seq}: it needs {bm.num_blocks_needed(seq, 1)} KV blocks and "
                f"the cache has {bm.num_blocks} in all; raise num_gpu_blocks_override / "
                "gpu_memory_utilization or lower max_model_len.")
        return out

    def _admit_beam_unit(self, seq: Sequence, out: SchedulerOutput, budget: int,
                         used_slots: int) -> tuple[int, int]:
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
        for s in unit:
            self.waiting.popleft()
            s.status = SequenceStatus.RUNNING
            self.running.append(s)
            # (forked beams' prompt logprobs are done: nothing to hold for)
            blocks, num_hit, _ = self._prefix_hit(s) or ([], 0, None)
            self._allocate(s, blocks, num_hit, None)
            k = min(s.num_uncomputed_tokens, budget)
            if k > 0:
                out.blocks_to_copy += bm.append_slots(s, k)
                sched = ScheduledSequence(s, s.num_computed_tokens, k)
                out.scheduled.append(sched)
                self._cache_scheduled(sched)
                budget -= k
        return len(unit), budget

    # ---------------------------------------------------------- prefix caching
    def _prefix_hit(self, seq: Sequence):
        """The cached prefix a waiting sequence reuses: (its blocks, the tokens they stand
        for, prompt-logprob entries taken from the store), or None to hold the sequence back
        one step (its hit stops at a block whose prompt logprobs this step computes).

        At least one token is computed (its logits sample). A request that still needs
        prompt logprobs reuses blocks only as far as their entries reach, minus one token:
        the logits before its first uncached token are computed fresh. A hit that ends
        inside a block copies that block (it is cached, hence immutable) unless it is
        written by this very step."""
        bm = self.block_manager
        if not bm.enable_caching or seq.num_computed_tokens or seq.block_table:
            return [], 0, None
        bs = bm.block_size
        extend_block_hashes(seq.block_hashes, seq.token_ids, seq.num_known_tokens, bs)
        blocks = bm.find_cached_prefix(seq.block_hashes)
        num_hit = min(len(blocks) * bs, seq.num_tokens - 1)
        served = None
        group = seq.group
        if group.prompt_logprobs is not None and not group.prompt_logprobs_done():
            k = group.sampling_params.prompt_logprobs
            store = self.logprob_store
            avail = len(group.prompt_logprobs)     # entries of tokens [0, avail) are there
            b = avail // bs
            served = []
            while (b < len(blocks) and (b + 1) * bs <= seq.prompt_len
                   and store.has(seq.block_hashes[b], k)):
                served += store.get(seq.block_hashes[b], k, avail - b * bs)
                avail = (b + 1) * bs
                b += 1
            if (b < len(blocks) and (b + 1) * bs <= seq.prompt_len
                    and store.is_pending(seq.block_hashes[b], k)):
                return None
            num_hit = min(num_hit, avail - 1)
        if num_hit % bs and blocks[num_hit // bs] in bm.pending:
            num_hit -= num_hit % bs
        return blocks[:cdiv(num_hit, bs)], num_hit, served

    def _allocate(self, seq: Sequence, blocks: list[int], num_hit: int, served) -> None:
        self.block_manager.allocate(seq, blocks, num_hit)
        if served:
            seq.group.prompt_logprobs.extend(served)
        if self.block_manager.enable_caching:
            stats = self.prefix_cache_stats
            key = "prefix_cache_preempted_" if seq.num_preemptions else "prefix_cache_"
            stats[key + "queries"] += seq.num_tokens
            stats[key + "hits"] += num_hit

    def _cache_scheduled(self, sched: ScheduledSequence) -> None:
        """Register the full blocks a scheduled chunk completes, and mark the prompt-logprob
        entries it completes as coming this step."""
        bm = self.block_manager
        if not bm.enable_caching:
            return
        seq = sched.seq
        end = sched.start + sched.num_new_tokens
        bm.cache_full_blocks(seq, end, pending=True)
        group = seq.group
        if group.prompt_logprobs is None or group.prompt_logprobs_done() or seq.index != 0:
            return
        bs = bm.block_size
        # logits up to position end - 1 give the entries of tokens up to `end`
        upto = min(end + 1, seq.prompt_len) // bs
        extend_block_hashes(seq.block_hashes, seq.token_ids, upto * bs, bs)
        k = group.sampling_params.prompt_logprobs
        for i in range(len(group.prompt_logprobs) // bs, upto):
            self.logprob_store.mark_pending(seq.block_hashes[i], k)

    def store_prompt_logprobs(self, group: SequenceGroup) -> None:
        """Keep the prompt-logprob entries of the request's full prompt blocks whose blocks
        are cached (after its step's entries were added)."""
        bm = self.block_manager
        if not bm.enable_caching or not group.seqs:
            return
        seq, bs = group.seqs[0], bm.block_size
        upto = min(len(group.prompt_logprobs), seq.prompt_len) // bs
        if upto <= group.num_logprob_blocks:
            return
        extend_block_hashes(seq.block_hashes, seq.token_ids, upto * bs, bs)
        k = group.sampling_params.prompt_logprobs
        entries = group.prompt_logprobs
        i = group.num_logprob_blocks
        while i < upto:
            h = seq.block_hashes[i]
            if h not in bm.cached:
                break       # the block fills in a later chunk (its entries are done first)
            self.logprob_store.put(h, k, entries[i * bs:(i + 1) * bs])
            i += 1
        group.num_logprob_blocks = i

    def reset_prefix_cache(self) -> bool:
        if not self.block_manager.reset_prefix_cache():
            return False
        self.logprob_store.clear()
        return True

    # ----------------------------------------------------------------- update
    def update(self, out: SchedulerOutput) -> None:
        """The step's forward ran: its tokens are now in the KV cache."""
        for s in out.scheduled:
            s.seq.num_computed_tokens = s.start + s.num_new_tokens

    def drop_waiting(self, seqs: list[Sequence]) -> None:
        """Async scheduling: sequences preempted while their last token was in flight, which
        that token ended, leave the waiting queue."""
        gone = {id(s) for s in seqs}
        self.waiting = deque(s for s in self.waiting if id(s) not in gone)

    def free_finished(self) -> None:
        keep = []
        for seq in self.running:
            if seq.is_finished():
                self.block_manager.free(seq)
            else:
                keep.append(seq)
        self.running = keep
