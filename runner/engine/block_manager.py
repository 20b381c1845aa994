"""Integer books of the paged KV cache: free blocks, reference counts, forks, copy-on-write.

The KV tensors live in the model runner; this class only decides which block ids a sequence
owns. A sequence's `block_table[i]` holds its tokens [i*block_size, (i+1)*block_size). Forked
sequences (n > 1 samples, beams) share their parent's blocks by reference count; a shared block
is copied (copy-on-write) only when a sequence is about to write into it, which can only be its
last, partially filled block. The copies are returned to the caller as (src, dst) pairs that the
model runner performs before the step's forward pass.
"""
from __future__ import annotations

from collections import deque

from runner.engine.sequence import Sequence


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}.")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))
        self.ref_counts = [0] * num_blocks

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks that must be taken from the free list so that `seq` can write its next
        `num_new_tokens` tokens (new blocks plus a copy-on-write of a shared one)."""
        end = seq.num_computed_tokens + num_new_tokens
        need = max(0, cdiv(end, self.block_size) - len(seq.block_table))
        if self._needs_cow(seq, num_new_tokens):
            need += 1
        return need

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_blocks_needed(seq, num_new_tokens) <= len(self.free_blocks)

    def _needs_cow(self, seq: Sequence, num_new_tokens: int) -> bool:
        if num_new_tokens <= 0:
            return False
        first = seq.num_computed_tokens // self.block_size
        return first < len(seq.block_table) and self.ref_counts[seq.block_table[first]] > 1

    # ------------------------------------------------------------------ changes
    def _take(self) -> int:
        block = self.free_blocks.popleft()
        assert self.ref_counts[block] == 0
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0, f"block {block} released twice"
        if self.ref_counts[block] == 0:
            self.free_blocks.append(block)

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Make `seq` own writable slots for its next `num_new_tokens` tokens.

        Returns the (src, dst) block copies the model runner must do first. The caller checks
        `can_append` before; running out here is a bug, not memory pressure.
        """
        if not self.can_append(seq, num_new_tokens):
            raise RuntimeError(f"append_slots without free blocks for {seq}")
        copies = []
        if self._needs_cow(seq, num_new_tokens):
            i = seq.num_computed_tokens // self.block_size
            src = seq.block_table[i]
            dst = self._take()
            self._release(src)
            seq.block_table[i] = dst
            copies.append((src, dst))
        end = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) < cdiv(end, self.block_size):
            seq.block_table.append(self._take())
        return copies

    def fork(self, parent: Sequence, child: Sequence) -> None:
        child.block_table = list(parent.block_table)
        for block in child.block_table:
            self.ref_counts[block] += 1

    def free(self, seq: Sequence) -> None:
        for block in seq.block_table:
            self._release(block)
        seq.block_table = []

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + \
            position % self.block_size
