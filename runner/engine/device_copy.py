"""Small host-to-device copies that never make the host wait for the GPU.

`torch.tensor(values, device="cuda")` (and `.to("cuda")` of an ordinary CPU tensor) copies from
pageable memory and synchronizes the stream: the host waits until every kernel queued before
it has run. The engine queues a step's sampler behind its forward pass and, with async
scheduling, the next step's forward before reading the tokens back; such a wait would idle the
GPU between steps. These helpers stage the values in pinned memory (PyTorch's caching host
allocator, which keeps a block until the copy that reads it has run) and copy with
non_blocking=True. On the CPU they are plain tensors.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A list of numbers -> a 1-D tensor on `device`, without waiting for queued GPU work."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor -> a copy on `device`, without waiting for queued GPU work."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def numpy_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array -> a tensor on `device`, without waiting for queued GPU work."""
    return host_to_device(torch.from_numpy(np.ascontiguousarray(array)), device)
