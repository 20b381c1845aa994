"""Automatic prefix caching's two helpers: block hashes, and the prompt-logprob side store.

Block hashes (vLLM v1's): full block i of a sequence (tokens [i*B, (i+1)*B)) is named by
sha256(hash of block i-1 | its token ids | extra keys), so equal hashes mean equal prefixes and
not merely equal blocks. A sequence keeps the hashes of its full, known blocks in
`Sequence.block_hashes` (computed lazily by `extend_block_hashes`; an async-scheduling
placeholder token is not known yet). The block manager (runner/engine/block_manager.py) maps
hashes to cached block ids.

Prompt logprobs from cached blocks (`PromptLogprobStore`): a request that asks for
prompt_logprobs needs, for every prompt token t, log p(token t | tokens before t), which comes
from the logits at position t - 1. A cached block holds keys and values, not logits, so vLLM
v1 skips the cache for such requests. Here, when a request computes prompt logprobs for the
tokens of a full prompt block, they are kept beside the block, keyed by its hash: per token its
logprob, rank and top-k alternatives, for the k that request asked for (as arrays:
runner/engine/prompt_logprobs.py). Entry t depends only on
tokens 0..t, which the hash covers, so any later request whose prefix hits that block can take
the entries instead of recomputing the block, provided they were computed with k >= its own.
The logits at the position just before the first uncached token still have to be computed, so
such a request's hit stops one token short of the entries it takes (the block holding that
position is copied, as on a fork, and that one position recomputed into the copy). Entries live
as long as their block's hash is cached: the block manager drops them on eviction.

Entries computed in the step being scheduled are `pending`: the scheduler holds back, for one
step, a request whose hit would otherwise stop at such a block, since a step later it can take
them (the choices of a multiple-choice item, admitted together, share their context this way).
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from runner.engine.prompt_logprobs import PromptLogprobChunk

# the parent of a sequence's first block
ROOT_HASH = b"runner-engine-prefix-cache-v1"


def hash_block(parent: bytes, token_ids: list[int], extra_keys: Optional[bytes] = None) -> bytes:
    """The hash of one full block given its parent's: sha256 over the parent's digest, the
    token ids as int64 and the extra keys (anything besides tokens that changes the KV)."""
    h = hashlib.sha256(parent)
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    if extra_keys:
        h.update(extra_keys)
    return h.digest()


def extend_block_hashes(hashes: list[bytes], token_ids: list[int], num_known: int,
                        block_size: int, extra_keys: Optional[bytes] = None) -> None:
    """Append the hashes of the full blocks of token_ids[:num_known] that `hashes` lacks."""
    end = num_known // block_size
    if len(hashes) >= end:
        return
    start = len(hashes)
    parent = hashes[-1] if hashes else ROOT_HASH
    raw = np.asarray(token_ids[start * block_size:end * block_size], dtype=np.int64).tobytes()
    step = block_size * 8
    for i in range(end - start):
        h = hashlib.sha256(parent)
        h.update(raw[i * step:(i + 1) * step])
        if extra_keys:
            h.update(extra_keys)
        parent = h.digest()
        hashes.append(parent)


class PromptLogprobStore:
    def __init__(self, block_size: int):
        self.block_size = block_size
        # hash -> (k, the block's B entries: position 0 of a sequence has a NaN logprob).
        # numpy, compact: a full cache of entries stays small and out of the garbage
        # collector's way
        self._entries: dict[bytes, tuple[int, PromptLogprobChunk]] = {}
        self._pending: dict[bytes, int] = {}     # hash -> k of entries this step computes

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, block_hash: bytes, k: int) -> bool:
        e = self._entries.get(block_hash)
        return e is not None and e[0] >= k

    def is_pending(self, block_hash: bytes, k: int) -> bool:
        return self._pending.get(block_hash, -1) >= k

    def mark_pending(self, block_hash: bytes, k: int) -> None:
        if self._pending.get(block_hash, -1) < k:
            self._pending[block_hash] = k

    def begin_step(self) -> None:
        """A new schedule(): what the last step computed is stored by now."""
        self._pending.clear()

    def put(self, block_hash: bytes, k: int, entries: PromptLogprobChunk) -> None:
        """entries: the block's B raw entries, computed with top-k (copied)."""
        if self.has(block_hash, k):
            return
        self._entries[block_hash] = (k, PromptLogprobChunk(
            entries.logprobs.copy(), entries.ranks.copy(), entries.top_ids.copy(),
            entries.top_logprobs.copy()))

    def get(self, block_hash: bytes, k: int, first: int = 0) -> PromptLogprobChunk:
        """Raw entries of the block's tokens [first, B), top-k cut to `k` (views)."""
        e = self._entries[block_hash][1]
        return PromptLogprobChunk(e.logprobs[first:], e.ranks[first:], e.top_ids[first:, :k],
                                  e.top_logprobs[first:, :k])

    def drop(self, block_hash: bytes) -> None:
        self._entries.pop(block_hash, None)

    def clear(self) -> None:
        self._entries.clear()
        self._pending.clear()
