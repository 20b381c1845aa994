"""Raw prompt logprobs as arrays, from the model runner to the request's RequestOutput.

A request with prompt_logprobs=k needs, for each prompt token t > 0, log p(token t | tokens
before t), its 1-based rank and the k best alternatives. They travel as numpy arrays, never as
one Python object per position (a multiple-choice evaluation scores millions of positions, and
per-position tuples and lists cost the host more to build and the garbage collector more to
scan than the GPU takes to compute them):

    ModelRunner.sample: one device-to-host copy per array for the whole step
      -> PromptLogprobChunk per sequence (views of the step's arrays)
    Scheduler.update_from_output -> PromptLogprobBuffer.extend (the request's arrays)
      <-> the prefix cache's side store (runner/engine/prefix_cache.py) keeps and serves
          whole blocks of them as chunks
    RequestOutputBuilder (runner/engine/request_outputs.py): vLLM's {token id: Logprob} dicts,
      built once per position from the arrays in bulk

Values are float32, which is lossless: they come from float32 log_softmax. Position 0 has no
logprob (nothing predicts the first token): it reads as None, stored as NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(slots=True)
class PromptLogprobChunk:
    """Consecutive positions' raw entries: [n] logprobs of the prompt tokens and their ranks,
    [n, w] the best alternatives' ids and logprobs, best first (w = min(k, vocab))."""
    logprobs: np.ndarray
    ranks: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray

    def __len__(self) -> int:
        return len(self.logprobs)

    @classmethod
    def from_entries(cls, entries: list) -> "PromptLogprobChunk":
        """From (logprob, rank, [(id, logprob)] best first) tuples (the form tests write)."""
        w = max((len(top) for _, _, top in entries), default=0)
        chunk = cls(np.array([e[0] for e in entries], np.float32),
                    np.array([e[1] for e in entries], np.int64),
                    np.zeros((len(entries), w), np.int64), np.zeros((len(entries), w), np.float32))
        for i, (_, _, top) in enumerate(entries):
            chunk.top_ids[i, :len(top)] = [t for t, _ in top]
            chunk.top_logprobs[i, :len(top)] = [v for _, v in top]
        return chunk

    @classmethod
    def concat(cls, chunks: list["PromptLogprobChunk"]) -> "PromptLogprobChunk":
        """Consecutive chunks as one (a request's blocks from the prefix cache: one copy into
        its buffer instead of one per block)."""
        if len(chunks) == 1:
            return chunks[0]
        return cls(np.concatenate([c.logprobs for c in chunks]),
                   np.concatenate([c.ranks for c in chunks]),
                   np.concatenate([c.top_ids for c in chunks]),
                   np.concatenate([c.top_logprobs for c in chunks]))

    def entries(self) -> list[tuple[float, int, list[tuple[int, float]]]]:
        """The same as (logprob, rank, [(id, logprob)]) tuples; NaN (position 0) is None."""
        tops = [list(zip(i, v)) for i, v in zip(self.top_ids.tolist(),
                                                self.top_logprobs.tolist())]
        return [None if lp != lp else (lp, rank, top)
                for lp, rank, top in zip(self.logprobs.tolist(), self.ranks.tolist(), tops)]


class PromptLogprobBuffer:
    """One request's raw prompt logprobs, positions [0, len(self)) filled (position 0 at once:
    it has none), in arrays sized for the whole prompt. Indexing gives the tuple form of
    PromptLogprobChunk.entries (None for position 0)."""

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len
        self.logprobs = np.full(prompt_len, np.nan, np.float32)
        self.ranks = np.zeros(prompt_len, np.int64)
        self.top_ids: Optional[np.ndarray] = None       # [P, w], once the width is known
        self.top_logprobs: Optional[np.ndarray] = None
        self._len = 1

    def __len__(self) -> int:
        return self._len

    @property
    def width(self) -> int:
        return 0 if self.top_ids is None else self.top_ids.shape[1]

    def extend(self, chunk: PromptLogprobChunk) -> None:
        n = len(chunk)
        if not n:
            return
        at = self._len
        if at + n > self.prompt_len:
            raise ValueError(f"prompt logprobs for positions [{at}, {at + n}) of a "
                             f"{self.prompt_len}-token prompt")
        if self.top_ids is None:
            w = chunk.top_ids.shape[1]
            self.top_ids = np.zeros((self.prompt_len, w), np.int64)
            self.top_logprobs = np.zeros((self.prompt_len, w), np.float32)
        w = self.width
        if chunk.top_ids.shape[1] < w:
            raise ValueError(f"prompt logprobs with {chunk.top_ids.shape[1]} alternatives for "
                             f"a request that has {w}")
        self.logprobs[at:at + n] = chunk.logprobs
        self.ranks[at:at + n] = chunk.ranks
        self.top_ids[at:at + n] = chunk.top_ids[:, :w]
        self.top_logprobs[at:at + n] = chunk.top_logprobs[:, :w]
        self._len = at + n

    def chunk(self, start: int, end: int) -> PromptLogprobChunk:
        """Positions [start, end) (views; position 0's logprob is NaN)."""
        end = min(end, self._len)
        w = self.width
        if self.top_ids is None:
            empty = np.zeros((max(0, end - start), 0), np.int64)
            return PromptLogprobChunk(self.logprobs[start:end], self.ranks[start:end], empty,
                                      empty.astype(np.float32))
        return PromptLogprobChunk(self.logprobs[start:end], self.ranks[start:end],
                                  self.top_ids[start:end, :w], self.top_logprobs[start:end, :w])

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if step != 1:
                raise ValueError("prompt logprobs take contiguous slices only")
            return self.chunk(start, stop).entries()
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"prompt logprob position {index} of {self._len}")
        return self.chunk(index, index + 1).entries()[0]
