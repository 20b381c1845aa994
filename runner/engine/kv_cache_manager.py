"""The prefix cache's policy over the block manager's books (vLLM v1's KVCacheManager).

The scheduler asks `get_computed_blocks(seq)` before admitting a sequence that holds no
blocks: the cached blocks of its longest cached prefix, how many tokens they stand for, and
the prompt-logprob entries it takes from the side store (runner/engine/prefix_cache.py), or
HOLD when it is worth admitting a step later. `allocate` gives it those blocks;
`cache_scheduled` registers the full blocks a scheduled chunk completes; after the step,
`store_prompt_logprobs` keeps a request's new prompt-logprob entries beside their blocks. The
hit counters are vLLM's: queries and hits in tokens, first admissions apart from admissions
after a preemption.

Rules (each one a test in tests/engine/test_prefix_caching.py):
- at least one token is computed: its logits sample the next token;
- a request that still needs prompt logprobs reuses blocks only as far as their stored entries
  reach (computed with k >= its own), minus one token: the logits before its first uncached
  token are computed fresh;
- a hit that ends inside a block copies that block (cached blocks are immutable), unless the
  block is written by the step being scheduled: then the whole block is computed again;
- a request whose hit would stop at a block whose prompt logprobs the step being scheduled
  computes waits one step for them.
"""
from __future__ import annotations

from typing import Optional

from runner.engine.block_manager import BlockManager, cdiv
from runner.engine.prefix_cache import PromptLogprobStore, extend_block_hashes
from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.sequence import Sequence, SequenceGroup

HOLD = None      # get_computed_blocks: admit this sequence a step later


class KVCacheManager:
    def __init__(self, block_manager: BlockManager):
        self.block_manager = block_manager
        self.enable_caching = block_manager.enable_caching
        self.block_size = block_manager.block_size
        self.logprob_store = PromptLogprobStore(block_manager.block_size)
        block_manager.on_evict = self.logprob_store.drop
        self.stats = {"prefix_cache_queries": 0, "prefix_cache_hits": 0,
                      "prefix_cache_preempted_queries": 0, "prefix_cache_preempted_hits": 0}

    def begin_step(self) -> None:
        self.block_manager.begin_step()
        self.logprob_store.begin_step()

    # --------------------------------------------------------------- admission
    def get_computed_blocks(self, seq: Sequence):
        """(hit blocks, tokens they stand for, prompt-logprob entries taken), or HOLD."""
        bm, bs = self.block_manager, self.block_size
        if (not self.enable_caching or seq.block_table
                or seq.sampling_params.skip_reading_prefix_cache):
            return [], 0, None
        extend_block_hashes(seq.block_hashes, seq.token_ids, seq.num_known_tokens, bs,
                            seq.group.hash_extra_keys)
        blocks = bm.find_cached_prefix(seq.block_hashes)
        num_hit = min(len(blocks) * bs, seq.num_tokens - 1)
        served = None
        group = seq.group
        if group.prompt_logprobs is not None and not group.prompt_logprobs_done():
            k = group.sampling_params.prompt_logprobs
            store = self.logprob_store
            avail = len(group.prompt_logprobs)      # entries of tokens [0, avail) are there
            b = avail // bs
            served = []                             # PromptLogprobChunks
            while (b < len(blocks) and (b + 1) * bs <= seq.prompt_len
                   and store.has(seq.block_hashes[b], k)):
                served.append(store.get(seq.block_hashes[b], k, avail - b * bs))
                avail = (b + 1) * bs
                b += 1
            if (b < len(blocks) and (b + 1) * bs <= seq.prompt_len
                    and store.is_pending(seq.block_hashes[b], k)):
                return HOLD
            num_hit = min(num_hit, avail - 1)
        if num_hit % bs and blocks[num_hit // bs] in bm.pending:
            num_hit -= num_hit % bs
        return blocks[:cdiv(num_hit, bs)], num_hit, served

    def can_allocate(self, hit, num_new_tokens: int) -> bool:
        blocks, num_hit, _ = hit
        return self.block_manager.can_allocate(blocks, num_hit, num_new_tokens)

    def allocate(self, seq: Sequence, hit) -> None:
        blocks, num_hit, served = hit
        self.block_manager.allocate(seq, blocks, num_hit)
        if seq.group.num_cached_tokens is None:
            # vLLM's RequestOutput.num_cached_tokens: the prefix-cache hit of the request's
            # first admission (a preempted request keeps it)
            seq.group.num_cached_tokens = num_hit
        if served:
            group = seq.group
            group.prompt_logprobs.extend(PromptLogprobChunk.concat(served))
            # (taken from the store: they are there already)
            group.num_logprob_blocks = max(group.num_logprob_blocks,
                                           len(group.prompt_logprobs) // self.block_size)
        if self.enable_caching:
            key = "prefix_cache_preempted_" if seq.num_preemptions else "prefix_cache_"
            self.stats[key + "queries"] += seq.num_tokens
            self.stats[key + "hits"] += num_hit

    def cache_scheduled(self, seq: Sequence, end: int) -> None:
        """Register the full blocks a scheduled chunk (up to position `end`) completes, and
        mark the prompt-logprob entries it completes as coming this step."""
        if not self.enable_caching:
            return
        self.block_manager.cache_full_blocks(seq, end, pending=True)
        group = seq.group
        if group.prompt_logprobs is None or group.prompt_logprobs_done() or seq.index != 0:
            return
        bs = self.block_size
        # logits up to position end - 1 give the entries of tokens up to `end`
        upto = min(end + 1, seq.prompt_len) // bs
        extend_block_hashes(seq.block_hashes, seq.token_ids, upto * bs, bs,
                            seq.group.hash_extra_keys)
        k = group.sampling_params.prompt_logprobs
        # from the first block not stored yet: its entries may be older than its hash (a
        # block is registered once full, its entries are complete one token earlier)
        for i in range(group.num_logprob_blocks, upto):
            self.logprob_store.mark_pending(seq.block_hashes[i], k)

    # ---------------------------------------------------------------- after a step
    def store_prompt_logprobs(self, group: SequenceGroup) -> None:
        """Keep the prompt-logprob entries of the request's full prompt blocks whose blocks
        are cached (after its step's entries were added)."""
        bm = self.block_manager
        if not self.enable_caching or not group.seqs:
            return
        seq, bs = group.seqs[0], self.block_size
        upto = min(len(group.prompt_logprobs), seq.prompt_len) // bs
        if upto <= group.num_logprob_blocks:
            return
        extend_block_hashes(seq.block_hashes, seq.token_ids, upto * bs, bs,
                            seq.group.hash_extra_keys)
        k = group.sampling_params.prompt_logprobs
        entries = group.prompt_logprobs
        i = group.num_logprob_blocks
        while i < upto:
            h = seq.block_hashes[i]
            if h not in bm.cached:
                break       # the block fills in a later chunk (its entries are done first)
            self.logprob_store.put(h, k, entries.chunk(i * bs, (i + 1) * bs))
            i += 1
        group.num_logprob_blocks = i

    def reset_prefix_cache(self) -> bool:
        if not self.block_manager.reset_prefix_cache():
            return False
        self.logprob_store.clear()
        return True

    def usage(self) -> Optional[float]:
        bm = self.block_manager
        return 1.0 - bm.num_free_blocks / bm.num_blocks
