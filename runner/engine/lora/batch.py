"""A step's token -> adapter-slot assignment, as the segment tensors the LoRA kernels read.

    per sequence: its slot (-1: no adapter) and its number of tokens this step
      -> per token: its slot [T]
      -> sorted_token_ids [T']: the token rows grouped by slot (slot 0's, then slot 1's, ...;
         tokens without an adapter left out), num_tokens_per_slot [S], slot_start [S]

The three live in device buffers of fixed size (max_num_batched_tokens, max_loras), written in
place every step (a copy from host memory that does not wait for the GPU), so that CUDA graphs
captured over them replay any mix of adapters: a graph's padding rows belong to no slot.
"""
from __future__ import annotations

import numpy as np
import torch

from runner.engine.device_copy import numpy_to_device


class LoRABatch:
    def __init__(self, max_num_tokens: int, max_loras: int, device: torch.device):
        self.max_loras = max_loras
        self.device = device
        self.sorted_token_ids = torch.zeros(max_num_tokens, dtype=torch.int32, device=device)
        self.num_tokens_per_slot = torch.zeros(max_loras, dtype=torch.int32, device=device)
        self.slot_start = torch.zeros(max_loras, dtype=torch.int32, device=device)
        self.num_lora_tokens = 0

    def segments(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sorted_token_ids, self.num_tokens_per_slot, self.slot_start

    def clear(self) -> None:
        """No token has an adapter (graph capture starts from this)."""
        self.num_tokens_per_slot.zero_()
        self.slot_start.zero_()
        self.num_lora_tokens = 0

    def fill(self, seq_slots: np.ndarray, qlens: np.ndarray) -> None:
        """seq_slots [n] int (-1: none), qlens [n]: the step's tokens per sequence."""
        token_slots = np.repeat(seq_slots.astype(np.int64), qlens)                 # [T]
        if len(token_slots) > self.sorted_token_ids.shape[0]:
            # (the buffer must keep its address for the CUDA graphs: it is never reallocated)
            raise RuntimeError(f"a step of {len(token_slots)} tokens is larger than the LoRA "
                               f"batch buffers ({self.sorted_token_ids.shape[0]})")
        has = token_slots >= 0
        # a stable sort keeps each slot's tokens in batch order
        order = np.argsort(np.where(has, token_slots, self.max_loras), kind="stable")
        order = order[:int(has.sum())].astype(np.int32)
        counts = np.bincount(token_slots[has], minlength=self.max_loras).astype(np.int32)
        starts = np.zeros(self.max_loras, np.int32)
        np.cumsum(counts[:-1], out=starts[1:])
        meta = np.concatenate([counts, starts, order])
        dev = numpy_to_device(meta, self.device)
        s = self.max_loras
        self.num_tokens_per_slot.copy_(dev[:s], non_blocking=True)
        self.slot_start.copy_(dev[s:2 * s], non_blocking=True)
        if len(order):
            self.sorted_token_ids[:len(order)].copy_(dev[2 * s:], non_blocking=True)
        self.num_lora_tokens = len(order)
