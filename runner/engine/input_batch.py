"""Step inputs: a SchedulerOutput -> flat token batch tensors and AttentionMetadata.

Every scheduled sequence contributes its input ids for positions [start, start +
num_new_tokens) and its block table (plain data: runner/engine/scheduler_output.py). Positions, slot
mapping and the padded block table are computed with numpy (no per-token Python loops), staged in
pinned host buffers on CUDA and copied with non_blocking=True, so the copies overlap with the
rest of input preparation. The pinned buffers are reused every step: before they are
overwritten, the event recorded after the previous step's copies is waited on.

`stage` (host arrays from a SchedulerOutput) and `load` (host arrays -> device tensors) are
separate so that tensor-parallel workers can run `load` on arrays the driver staged and sent
(`pack` / `unpack`: flat int64 arrays, no pickled tensors).
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import torch

from runner.engine.attention import AttentionMetadata
from runner.engine.scheduler_output import SchedulerOutput


class InputBuilder:
    def __init__(self, block_size: int, device: torch.device, max_num_batched_tokens: int,
                 max_num_seqs: int, max_model_len: int, for_torch_reference: bool):
        self.block_size = block_size
        self.device = device
        self.for_torch_reference = for_torch_reference
        self.pinned = device.type == "cuda"
        max_blocks = -(-max_model_len // block_size)
        # staging buffers, sized for the largest step (rows beyond max_num_seqs: forks/beams)
        rows = max(max_num_seqs, 1) * 4
        self._i64 = self._buffer((3, max(max_num_batched_tokens, rows)), torch.int64)
        self._i32 = self._buffer((2, rows + 1), torch.int32)
        self._tables = self._buffer((rows, max_blocks), torch.int32)
        self._copied = None        # CUDA event: the last step's host-to-device copies are done

    def _buffer(self, shape, dtype) -> Optional[torch.Tensor]:
        return torch.zeros(shape, dtype=dtype, pin_memory=self.pinned)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        return host.to(self.device, non_blocking=self.pinned)

    def stage(self, out: SchedulerOutput) -> tuple[int, int, int]:
        """Fill the host staging buffers for a step; returns (num_tokens, num_seqs, width), the
        extent of what was written (what `load` reads and `pack` sends to other ranks)."""
        scheduled = out.scheduled
        n = len(scheduled)
        bs = self.block_size
        self._wait_for_copies()
        starts = np.fromiter((s.start for s in scheduled), np.int64, n)
        qlens = np.fromiter((len(s.token_ids) for s in scheduled), np.int64, n)
        qsl = np.zeros(n + 1, np.int64)
        np.cumsum(qlens, out=qsl[1:])
        num_tokens = int(qsl[-1])
        seq_lens = starts + qlens
        lens = np.fromiter((len(s.block_table) for s in scheduled), np.int64, n)
        width = int(lens.max())
        self._ensure(num_tokens, n, width)
        tables = self._tables.numpy()[:n, :width]
        flat = np.concatenate([s.block_table for s in scheduled])     # one copy, no loop
        if len(flat) == n * width:
            tables[:] = flat.reshape(n, width)
        else:                       # ragged: row b holds lens[b] blocks, zeros after
            tables.fill(0)
            tables[np.arange(width)[None, :] < lens[:, None]] = flat
        seq_of_token = np.repeat(np.arange(n), qlens)
        positions = np.arange(num_tokens) - np.repeat(qsl[:-1] - starts, qlens)
        slots = tables[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        i64 = self._i64.numpy()
        if n == num_tokens:        # decode-only: one token per sequence
            i64[0, :n] = [s.token_ids[0] for s in scheduled]
        else:
            i64[0, :num_tokens] = list(itertools.chain.from_iterable(
                s.token_ids for s in scheduled))
        i64[1, :num_tokens] = positions
        i64[2, :num_tokens] = slots
        i32 = self._i32.numpy()
        i32[0, :n + 1] = qsl
        i32[1, :n] = seq_lens
        return num_tokens, n, width

    def load(self, num_tokens: int, n: int, width: int
             ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Staged host buffers -> (input_ids [T], positions [T], AttentionMetadata) on the
        device."""
        i32 = self._i32.numpy()
        qsl = i32[0, :n + 1].astype(np.int64)
        seq_lens = i32[1, :n].astype(np.int64)
        qlens = np.diff(qsl)
        dev_i64 = self._to_device(self._i64[:, :num_tokens])
        dev_i32 = self._to_device(self._i32[:, :n + 1])
        dev_tables = self._to_device(self._tables[:n, :width])
        if self.pinned:
            self._copied = torch.cuda.Event()
            self._copied.record()
        meta = AttentionMetadata(
            slot_mapping=dev_i64[2], query_start_loc=qsl.tolist(), seq_lens=seq_lens.tolist(),
            block_tables=dev_tables, max_query_len=int(qlens.max()),
            max_seq_len=int(seq_lens.max()), decode_only=n == num_tokens,
            query_start_loc_t=dev_i32[0], seq_lens_t=dev_i32[1, :n])
        if self.for_torch_reference:
            decode = np.nonzero(qlens == 1)[0]
            meta.decode_idx = torch.from_numpy(decode).to(self.device)
            meta.prefill_idx = tuple(np.nonzero(qlens > 1)[0].tolist())
            meta.decode_seq_lens = torch.from_numpy(seq_lens[decode]).to(self.device)
            meta.decode_query_rows = torch.from_numpy(qsl[:-1][decode]).to(self.device)
        elif not meta.decode_only and (qlens == 1).any():
            # a mixed step on the kernels: its one-token rows go to the decode kernel, its
            # prefill chunks to the prefill kernel (runner/engine/attention.py)
            decode = np.nonzero(qlens == 1)[0]
            meta.decode_idx = torch.from_numpy(decode).to(self.device)
            meta.decode_seq_lens = torch.from_numpy(
                seq_lens[decode].astype(np.int32)).to(self.device)
            meta.decode_query_rows = torch.from_numpy(qsl[:-1][decode]).to(self.device)
            meta.prefill_idx_t = torch.from_numpy(
                np.nonzero(qlens > 1)[0].astype(np.int32)).to(self.device)
        return dev_i64[0], dev_i64[1], meta

    def staged_input_ids(self, num_tokens: int) -> np.ndarray:
        """The staged step's input ids (host, writable: a view of the staging buffer)."""
        return self._i64.numpy()[0, :num_tokens]

    def query_start_loc(self, n: int) -> list[int]:
        """The staged step's query_start_loc (host), for choosing the rows that need logits."""
        return self._i32.numpy()[0, :n + 1].tolist()

    # ------------------------------------------------- sending a staged step to other ranks
    def pack(self, num_tokens: int, n: int, width: int) -> list[np.ndarray]:
        """The staged step as flat int64 arrays (token ids, positions, slots | query starts,
        context lengths | block tables), to send to the other tensor-parallel ranks."""
        return [self._i64.numpy()[:, :num_tokens].ravel(),
                self._i32.numpy()[:, :n + 1].ravel().astype(np.int64),
                self._tables.numpy()[:n, :width].ravel().astype(np.int64)]

    def unpack(self, num_tokens: int, n: int, width: int, flat: np.ndarray) -> int:
        """Write a packed step (starting at flat[0]) into the staging buffers; returns the
        number of int64 values read."""
        self._wait_for_copies()
        self._ensure(num_tokens, n, width)
        a, b, c = 3 * num_tokens, 2 * (n + 1), n * width
        self._i64.numpy()[:, :num_tokens] = flat[:a].reshape(3, num_tokens)
        self._i32.numpy()[:, :n + 1] = flat[a:a + b].reshape(2, n + 1)
        self._tables.numpy()[:n, :width] = flat[a + b:a + b + c].reshape(n, width)
        return a + b + c

    def _wait_for_copies(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None

    def _ensure(self, num_tokens: int, n: int, width: int) -> None:
        if num_tokens > self._i64.shape[1] or n + 1 > self._i32.shape[1] or \
                n > self._tables.shape[0] or width > self._tables.shape[1]:
            self._grow(num_tokens, n, width)

    def _grow(self, num_tokens: int, n: int, width: int) -> None:
        self._i64 = self._buffer((3, max(num_tokens, self._i64.shape[1])), torch.int64)
        self._i32 = self._buffer((2, max(n + 1, self._i32.shape[1])), torch.int32)
        self._tables = self._buffer((max(n, self._tables.shape[0]),
                                     max(width, self._tables.shape[1])), torch.int32)
