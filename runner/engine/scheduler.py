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

This module imports no torch.cuda: it is tested on CPU with fake model outputs.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runner.engine.block_manager import BlockManager
from runner.engine.config import SchedulerConfig
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus


@dataclass
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
        if group.n > self.config.max_num_seqs:
            raise ValueError(f"n={group.n} is larger than max_num_seqs="
                             f"{self.config.max_num_seqs}; raise max_num_seqs or lower n.")
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
        """Slots a sequence will hold: a request with n > 1 forks after its first sample."""
        if len(seq.group.seqs) < seq.group.n:
            return seq.group.n
        return 1

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        self.num_preemptions += 1

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager

        # 1. running sequences, oldest first; preempt from the newest end when blocks run out
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            k = min(seq.num_uncomputed_tokens, budget)
            while not bm.can_append(seq, k):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                break                       # seq itself was the newest: nothing after it runs
            out.blocks_to_copy += bm.append_slots(seq, k)
            out.scheduled.append(ScheduledSequence(seq, seq.num_computed_tokens, k))
            budget -= k
            i += 1

        # 2. admit waiting sequences, unless this step had to preempt (memory is tight)
        if not out.preempted:
            used_slots = sum(self._seq_slots(s) for s in self.running)
            while self.waiting and budget > 0:
                seq = self.waiting[0]
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

        if out.is_empty and self.waiting and not self.running:
            seq = self.waiting[0]
            raise RuntimeError(
                f"cannot schedule {seq}: it needs {bm.num_blocks_needed(seq, 1)} KV blocks and "
                f"the cache has {bm.num_blocks} in all; raise num_gpu_blocks_override / "
                "gpu_memory_utilization or lower max_model_len.")
        return out

    # ----------------------------------------------------------------- update
    def update(self, out: SchedulerOutput) -> None:
        """The step's forward ran: its tokens are now in the KV cache."""
        for s in out.scheduled:
            s.seq.num_computed_tokens = s.start + s.num_new_tokens

    def free_finished(self) -> None:
        keep = []
        for seq in self.running:
            if seq.is_finished():
                self.block_manager.free(seq)
            else:
                keep.append(seq)
        self.running = keep
