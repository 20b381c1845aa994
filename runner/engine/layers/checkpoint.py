"""Lazy checkpoint tensors: a safetensors slice that reads from the file only the part a
tensor-parallel rank's weight loader narrows it to."""
from __future__ import annotations

import torch


class CheckpointSlice:
    """A checkpoint tensor not read yet: narrow() and [...] read only the part asked for."""

    def __init__(self, tensor_slice):
        self._slice = tensor_slice
        self.shape = torch.Size(tensor_slice.get_shape())

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        return self._slice[(slice(None),) * dim + (slice(start, start + length),)]

    def __getitem__(self, index) -> torch.Tensor:
        return self._slice[index]

    def materialize(self) -> torch.Tensor:
        return self._slice[:] if self.shape else self._slice[...]


def materialize(tensor) -> torch.Tensor:
    return tensor.materialize() if isinstance(tensor, CheckpointSlice) else tensor
