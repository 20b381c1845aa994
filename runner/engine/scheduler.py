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

from runner.engine.block_manager import BlockManager
from runner.engine.config import SchedulerConfig
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

        # 1. running sequences, oldest first; preempt from the newest end when blocks run out
        visited: set[int] = set()
        block_size, ref_counts = bm.block_size, bm.ref_counts
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
                if i < len(table) and ref_counts[table[i]] == 1:
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

        # 2. admit waiting sequences, unless this step had to preempt (memory is tight)
        if not out.preempted:
            used_slots = sum(self._seq_slots(s) for s in self.running)
            while self.waiting and budget > 0:
                seq = self.waiting[0]
                if seq.group.beam is not None and seq.group.forked:
                    admitted, budget = self._admit_beam_unit(seq, out, budget, used_slots)
                    if not admitted:
                        break
                    used_slots += admitted
                    continue
                need = seq.num_uncomputed_tokens
                k = min(need, budget)
                if k < need and not self.config.enable_chunked_prefill:
                    break
                slots = self._seq_slots(seq)
                if used_slots + slots > self.config.max_num_seqs:
                    break
                if not bm.can_append(seq, k):
                    break
                self.waiting.popleft()
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
                used_slots += slots
                out.blocks_to_copy += bm.append_slots(seq, k)
                out.scheduled.append(ScheduledSequence(seq, seq.num_computed_tokens, k))
                budget -= k

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
            k = min(s.num_uncomputed_tokens, budget)
            if k > 0:
                out.blocks_to_copy += bm.append_slots(s, k)
                out.scheduled.append(ScheduledSequence(s, s.num_computed_tokens, k))
                budget -= k
        return len(unit), budget

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
