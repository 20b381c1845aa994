"""Integer books of the paged KV cache: free blocks, reference counts, prefix hashes, forks and
copy-on-write.

The KV tensors live in the model runner; this class only decides which block ids a sequence
owns. A sequence's `block_table[i]` holds its tokens [i*block_size, (i+1)*block_size). Forked
sequences (n > 1 samples, beams) share their parent's blocks by reference count; a block that
is shared, or that holds a cached prefix, is copied (copy-on-write) before a sequence writes
into it. The copies are returned to the caller as (src, dst) pairs that the model runner
performs before the step's forward pass.

Automatic prefix caching (vLLM v1's, `enable_caching`): a full block whose tokens are computed
is registered under its hash (runner/engine/prefix_cache.py) by `cache_full_blocks`. When its
last sequence frees it, it keeps its contents and its hash and joins the free queue, which is
an LRU: a block is evicted (its hash forgotten) only when a free block is needed and it is the
least recently freed. Blocks that hold no hash are taken first; a sequence's blocks are freed
tail first, so the shared heads of prefixes outlive their tails. `find_cached_prefix` gives a
new request the longest run of cached blocks matching its leading block hashes; `allocate`
takes them (off the free queue if nobody held them).

Swap books (preemption_mode "swap"): a second BlockManager, with caching off, holds the CPU
swap space's blocks. `swap_out` gives a preempted group's sequences CPU blocks for their GPU
blocks (one CPU block per distinct GPU block, shared as the GPU ones were) and frees the GPU
ones; `swap_in` does the reverse. The (src, dst) pairs go to the model runner, which copies
swap-outs first, then swap-ins, then copy-on-write pairs, then runs the forward.

Blocks registered while a step is being scheduled are `pending`: their keys and values are
written by that step's forward pass. Another sequence of the same step may attend to them (each
layer writes every token's keys and values before any attention reads them), but no block copy
may read them, since copies run before the forward.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

from runner.engine.prefix_cache import extend_block_hashes
from runner.engine.sequence import Sequence


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}.")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.ref_counts = [0] * num_blocks
        # blocks nobody holds, in eviction order (first = taken first)
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.block_hashes: list[Optional[bytes]] = [None] * num_blocks   # cached blocks' hashes
        self.cached: dict[bytes, int] = {}            # hash -> the block that holds it
        self.pending: set[int] = set()                # registered during this schedule()
        self.on_evict: Optional[Callable[[bytes], None]] = None

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (cached ones included: they are evicted on demand)."""
        return len(self.free_queue)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    def _needs_cow(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether `seq`'s next write lands in a block it may not write: one shared with
        another sequence, or a cached (immutable) one it took from the prefix cache."""
        if num_new_tokens <= 0:
            return False
        first = seq.num_computed_tokens // self.block_size
        if first >= len(seq.block_table):
            return False
        block = seq.block_table[first]
        return self.ref_counts[block] > 1 or self.block_hashes[block] is not None

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks that must be taken from the free queue so that `seq` can write its next
        `num_new_tokens` tokens (new blocks plus a copy-on-write of a shared one)."""
        end = seq.num_computed_tokens + num_new_tokens
        need = max(0, cdiv(end, self.block_size) - len(seq.block_table))
        if self._needs_cow(seq, num_new_tokens):
            need += 1
        return need

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_blocks_needed(seq, num_new_tokens) <= len(self.free_queue)

    def can_allocate(self, hit_blocks: list[int], num_computed: int,
                     num_new_tokens: int) -> bool:
        """Whether a waiting sequence that reuses `hit_blocks` (its first `num_computed`
        tokens) can take slots for `num_new_tokens` more."""
        bs = self.block_size
        need = sum(1 for b in hit_blocks if self.ref_counts[b] == 0)    # leave the queue
        need += max(0, cdiv(num_computed + num_new_tokens, bs) - len(hit_blocks))
        if num_new_tokens > 0 and num_computed % bs:
            need += 1                        # the partly reused block is copied first
        return need <= len(self.free_queue)

    def find_cached_prefix(self, block_hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `block_hashes`."""
        blocks = []
        if self.enable_caching:
            cached = self.cached
            for h in block_hashes:
                b = cached.get(h)
                if b is None:
                    break
                blocks.append(b)
        return blocks

    # ------------------------------------------------------------------ changes
    def _take(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        assert self.ref_counts[block] == 0
        h = self.block_hashes[block]
        if h is not None:                    # evict its cached prefix
            self.block_hashes[block] = None
            del self.cached[h]
            if self.on_evict is not None:
                self.on_evict(h)
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0, f"block {block} released twice"
        if self.ref_counts[block] == 0:
            self.free_queue[block] = None                    # cached: evicted last (LRU)
            if self.block_hashes[block] is None and self.enable_caching:
                self.free_queue.move_to_end(block, last=False)   # holds nothing: first

    def allocate(self, seq: Sequence, hit_blocks: list[int], num_computed: int) -> None:
        """A waiting sequence without blocks takes the cached blocks of its prefix; its first
        `num_computed` tokens count as computed."""
        assert not seq.block_table
        for b in hit_blocks:
            if self.ref_counts[b] == 0:
                del self.free_queue[b]
            self.ref_counts[b] += 1
        seq.block_table = list(hit_blocks)
        seq.table_snapshot = None
        seq.num_cached_blocks = len(hit_blocks)
        seq.num_computed_tokens = num_computed

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Make `seq` own writable slots for its next `num_new_tokens` tokens.

        Returns the (src, dst) block copies the model runner must do first. The caller checks
        `can_append` before; running out here is a bug, not memory pressure.
        """
        if not self.can_append(seq, num_new_tokens):
            raise RuntimeError(f"append_slots without free blocks for {seq}")
        seq.table_snapshot = None
        copies = []
        if self._needs_cow(seq, num_new_tokens):
            i = seq.num_computed_tokens // self.block_size
            src = seq.block_table[i]
            assert src not in self.pending, "a block copy would read keys not written yet"
            dst = self._take()
            self._release(src)
            seq.block_table[i] = dst
            seq.num_cached_blocks = min(seq.num_cached_blocks, i)
            copies.append((src, dst))
        end = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) < cdiv(end, self.block_size):
            seq.block_table.append(self._take())
        return copies

    def cache_full_blocks(self, seq: Sequence, num_tokens: int, pending: bool = False) -> None:
        """Register `seq`'s full blocks within its first `num_tokens` tokens (computed, or
        being computed by the step being scheduled when `pending`) under their hashes. A block
        whose hash another block already holds stays unregistered (a duplicate)."""
        if not self.enable_caching:
            return
        bs = self.block_size
        # (a placeholder's token is still on the GPU)
        upto = min(num_tokens, seq.num_known_tokens, len(seq.block_table) * bs) // bs
        if upto <= seq.num_cached_blocks:
            return
        extend_block_hashes(seq.block_hashes, seq.token_ids, upto * bs, bs,
                            seq.group.hash_extra_keys)
        first_written = seq.num_computed_tokens // bs
        for i in range(seq.num_cached_blocks, upto):
            block = seq.block_table[i]
            if self.block_hashes[block] is not None:
                continue
            h = seq.block_hashes[i]
            if h in self.cached:
                continue
            self.cached[h] = block
            self.block_hashes[block] = h
            if pending and i >= first_written:
                self.pending.add(block)
        seq.num_cached_blocks = upto

    def fork(self, parent: Sequence, child: Sequence) -> None:
        child.block_table = list(parent.block_table)
        child.table_snapshot = parent.table_snapshot
        for block in child.block_table:
            self.ref_counts[block] += 1
        child.block_hashes = list(parent.block_hashes)
        child.num_cached_blocks = parent.num_cached_blocks

    def free(self, seq: Sequence) -> None:
        """Give back `seq`'s blocks, its computed full blocks staying cached."""
        self.cache_full_blocks(seq, seq.num_computed_tokens)
        for block in reversed(seq.block_table):
            self._release(block)
        seq.block_table = []
        seq.table_snapshot = None
        seq.num_cached_blocks = 0

    # ------------------------------------------------------------------ swapping
    @staticmethod
    def num_distinct_blocks(seqs: list[Sequence]) -> int:
        return len({b for seq in seqs for b in seq.block_table})

    def swap_out(self, seqs: list[Sequence], cpu: "BlockManager",
                 redirect: dict[int, int]) -> list[tuple[int, int]]:
        """Move `seqs` (one group, sharing blocks) to CPU blocks of `cpu`; returns the (gpu,
        cpu) copies. `redirect[gpu] = src`: a block the step's copy-on-write would fill from
        src, which this step no longer runs, is swapped out from src."""
        mapping: dict[int, int] = {}
        pairs = []
        for seq in seqs:
            self.cache_full_blocks(seq, seq.num_computed_tokens)
            table = []
            for b in seq.block_table:
                c = mapping.get(b)
                if c is None:
                    c = mapping[b] = cpu._take()
                    pairs.append((redirect.get(b, b), c))
                else:
                    cpu.ref_counts[c] += 1
                table.append(c)
            for b in reversed(seq.block_table):
                self._release(b)
            seq.block_table = table
            seq.table_snapshot = None
            seq.num_cached_blocks = 0
        return pairs

    def swap_in(self, seqs: list[Sequence], cpu: "BlockManager") -> list[tuple[int, int]]:
        """Move swapped-out `seqs` back to fresh GPU blocks; returns the (cpu, gpu) copies."""
        mapping: dict[int, int] = {}
        pairs = []
        for seq in seqs:
            table = []
            for c in seq.block_table:
                g = mapping.get(c)
                if g is None:
                    g = mapping[c] = self._take()
                    pairs.append((c, g))
                else:
                    self.ref_counts[g] += 1
                table.append(g)
            for c in seq.block_table:
                cpu._release(c)
            seq.block_table = table
            seq.table_snapshot = None
        return pairs

    def begin_step(self) -> None:
        """A new schedule(): the blocks registered for the last step are written by now (its
        forward pass is queued before any copy of this step)."""
        self.pending.clear()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix. Only when no sequence holds a block (vLLM's rule):
        returns whether it was done."""
        if len(self.free_queue) != self.num_blocks:
            return False
        for h in self.cached:
            if self.on_evict is not None:
                self.on_evict(h)
        self.cached.clear()
        self.block_hashes = [None] * self.num_blocks
        self.pending.clear()
        return True
