"""Custom all-reduce for the small tensors of decode steps (vLLM's `CustomAllreduce` idea), built
on PyTorch's symmetric memory: each rank copies its partial sum into a buffer every peer has
mapped, the ranks meet at a barrier, and each reads all the buffers over NVLink and adds them
(one kernel, `torch.ops.symm_mem.one_shot_all_reduce_copy_out`). At batch 1 a row-parallel
layer's all-reduce carries a few KiB; NCCL spends ~20 us on that, this ~8 us, and a Llama-2-13B
decode step holds 81 of them (docs/benchmarks.md, "Tensor parallelism").

Used for tensors up to `max_bytes` of the dtype it was built for (float32 or bfloat16: the
kernels PyTorch ships); anything else goes to NCCL. Which path a call takes depends only on
its shape and dtype, which every rank shares, so all ranks always pick the same one. Start-up
is collective: every rank checks what it has (CUDA, P2P access to each peer, the op), the
group agrees, builds the buffers, and checks one all-reduce against the known answer; if any
rank fails, all fall back to NCCL and the reason is logged. NVLink multicast is never used (a
machine-wide hazard on shared hosts); `disable_custom_all_reduce=True` turns this off.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch

logger = logging.getLogger("runner.engine")

MAX_BYTES = 8 << 20           # the buffer cap; larger tensors (prefill) go to NCCL
# Process-wide fact mirrored from PyTorch: the process groups symmetric memory was set up for in
# this process. PyTorch caches a group's rendezvous store by the group's name for the life of
# the process, and the default group's name ("0") comes back with every engine: a second
# engine's rendezvous would go through the first one's dead store while its fresh workers use
# the new one, and wait for ever. (A group name of our own is refused: PyTorch 2.11 resolves it
# to a process group.)
_RENDEZVOUSED: set[str] = set()
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def unavailable_reason(device: torch.device, world_size: int, dtype: torch.dtype) -> \
        Optional[str]:
    """Why this rank cannot run the custom all-reduce (None: it can)."""
    if device.type != "cuda":
        return f"device {device} is not a GPU"
    if dtype not in _SUPPORTED_DTYPES:
        return f"dtype {dtype} (PyTorch's one-shot kernel takes float32 and bfloat16)"
    if world_size not in (2, 4, 8):
        return f"world size {world_size} (2, 4 or 8 GPUs)"
    try:
        import torch.distributed._symmetric_memory  # noqa: F401
        torch.ops.symm_mem.one_shot_all_reduce_copy_out     # raises when the op is missing
    except (ImportError, AttributeError, RuntimeError) as exc:
        return f"this PyTorch has no symmetric-memory one-shot all-reduce ({exc})"
    for peer in range(world_size):            # rank r runs on cuda:r
        if peer != device.index and not torch.cuda.can_device_access_peer(device.index, peer):
            return f"GPU {device.index} cannot access GPU {peer} directly (no P2P)"
    return None


class CustomAllreduce:
    """One rank's symmetric buffer and the one-shot all-reduce over it."""

    def __init__(self, group_name: str, device: torch.device, dtype: torch.dtype,
                 max_bytes: int):
        import torch.distributed._symmetric_memory as symm_mem

        # this engine never uses multicast: do not let the allocator set it up either
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        self.group_name, self.dtype = group_name, dtype
        self.max_bytes = max_bytes
        numel = max_bytes // torch.empty((), dtype=dtype).element_size()
        self.buffer = symm_mem.empty(numel, dtype=dtype, device=device)
        self._handle = symm_mem.rendezvous(self.buffer, group_name)     # collective

    def should_use(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        # the kernel needs a 4-byte-aligned size (an even count of bfloat16)
        return (x.dtype == self.dtype and 0 < nbytes <= self.max_bytes and nbytes % 4 == 0
                and x.is_contiguous())

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks, in a new tensor (works inside CUDA graph capture)."""
        out = torch.empty_like(x)
        view = self.buffer[:x.numel()].view_as(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(view, x, "sum", self.group_name, out)
        return out

    def close(self) -> None:
        self._handle = None
        self.buffer = None


def build_custom_all_reduce(group_name: str, rank: int, world_size: int,
                            device: torch.device, dtype: torch.dtype, max_bytes: int,
                            agree: Callable[[int], int]) -> Optional[CustomAllreduce]:
    """Collective: every rank calls this at the same point. `agree(v)` returns the minimum of
    v over the ranks (on the CPU group). Returns None (NCCL everywhere) unless every rank built
    its buffer and the probe all-reduce gave the right sum on every rank."""
    reason = unavailable_reason(device, world_size, dtype)
    if reason is None and group_name in _RENDEZVOUSED:
        reason = (f"an earlier tensor-parallel engine in this process set up symmetric memory "
                  f"for process group {group_name!r}, and PyTorch keeps that group's store for "
                  "the life of the process: one engine per process gets the custom path")
    if agree(0 if reason else 1) == 0:
        if reason and rank == 0:
            logger.info("custom all-reduce off (%s): NCCL for every all-reduce", reason)
        elif rank == 0:
            logger.info("custom all-reduce off (another rank cannot run it): NCCL")
        return None
    ca, error = None, None
    try:
        _RENDEZVOUSED.add(group_name)
        ca = CustomAllreduce(group_name, device, dtype, max_bytes)
    except Exception as exc:     # noqa: BLE001 - an optional fast path: NCCL is always there
        error = f"{type(exc).__name__}: {exc}"
    if agree(0 if ca is None else 1) == 0:
        logger.warning("custom all-reduce off (rank %d: %s): NCCL for every all-reduce", rank,
                       error or "another rank failed to set it up")
        return None
    # the probe: rank r contributes r + 1 everywhere, so the sum is n (n + 1) / 2
    x = torch.full((min(4096, ca.buffer.numel()),), float(rank + 1), dtype=dtype,
                   device=device)
    got = ca.all_reduce(x)
    want = world_size * (world_size + 1) / 2
    ok = bool(torch.all(got == want).item())
    if agree(1 if ok else 0) == 0:
        logger.warning("custom all-reduce off (its probe gave a wrong sum on some rank): NCCL")
        ca.close()
        return None
    if rank == 0:
        logger.info("custom all-reduce on: one-shot over symmetric memory for %s tensors up "
                    "to %d KiB, NCCL above", str(dtype).replace("torch.", ""), max_bytes >> 10)
    return ca
