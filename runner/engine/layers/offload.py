"""cpu_offload_gb: decoder layers whose weights live in pinned CPU memory and stream to the GPU
one layer ahead of use, overlapped with the compute of the layer before.

    model_loader.get_model, cpu_offload_gb > 0 on CUDA: the model is built and loaded on the CPU
    -> offload_model(model, device, max_bytes, process):
         everything outside the decoder layers moves to the GPU; then layer by layer, in order:
         move to the GPU, `process` (quantization layouts), and while fewer than max_bytes are
         offloaded, LayerOffloader.add packs the layer's parameters into one pinned CPU buffer
         (256-byte aligned) and drops the GPU copy. The first layers go, as in vLLM.
    -> LayerOffloader.finish: NUM_SLOTS GPU staging buffers, each as large as the largest
         offloaded layer; the parameters of offloaded layer p become views into slot p % 2, so
         their addresses never change and layers p and p + 2 share memory.

    forward, offloaded layer p:
      pre-hook   the compute stream waits for p's copy (issued a layer ahead; issued here if
                 it was not, so a pass that stopped half-way heals itself)
      post-hook  the compute stream records that slot p % 2 is free; the copy stream waits for
                 that and copies the slot's next layer (p + 2, or after the last layer the
                 first ones of the next pass), which overlaps the compute of layer p + 1

A step then costs about max(compute, PCIe copy) per offloaded layer; tokens are those of the
model without offloading (the same bytes, the same kernels). The hooks issue stream waits that
CUDA-graph capture would freeze, so config.py runs offloaded models eager. On a CPU device
vLLM's offloader leaves the model as it is, and so does the engine (a log line says so); the
class itself also runs on CPU with synchronous copies, which is how the tests check its
rotation.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch
from torch import nn

logger = logging.getLogger("runner.engine")

ALIGN = 256          # byte offset of every tensor in a flat buffer (any dtype's alignment)
NUM_SLOTS = 2


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, the ModuleList of repeated blocks): the list that holds the most parameters."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cpu_offload_gb: {type(model).__name__} has no list of layers")
    return max(lists, key=lambda nm: param_bytes(nm[1]))


def move_tensors(module: nn.Module, device: torch.device, recurse: bool = True) -> None:
    """Parameters (kept as the same Parameter objects, attributes and ties intact) and buffers
    of `module` to `device`."""
    mods = module.modules() if recurse else [module]
    for m in mods:
        for p in m.parameters(recurse=False):
            if p.device != device:
                p.data = p.data.to(device)
        for name, b in m.named_buffers(recurse=False):
            if b is not None and b.device != device:
                m._buffers[name] = b.to(device)


class LayerOffloader:
    """Offloaded layers in forward order, their pinned host bytes and the rotating GPU slots."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.layers: list[nn.Module] = []
        self.host: list[torch.Tensor] = []                 # [bytes] uint8 per layer (pinned)
        # per layer: (parameter, byte offset, bytes, shape)
        self.entries: list[list[tuple[nn.Parameter, int, int, torch.Size]]] = []
        self.slots: list[torch.Tensor] = []
        self.resident: list[Optional[int]] = []
        self.offloaded_bytes = 0

    def add(self, layer: nn.Module) -> None:
        """Pack the layer's parameters into one host buffer and release their device copies."""
        entries, total = [], 0
        for p in layer.parameters():
            nbytes = p.numel() * p.element_size()
            entries.append((p, total, nbytes, p.shape))
            total = _align(total + nbytes)
        flat = torch.empty(total, dtype=torch.uint8, pin_memory=self.cuda)
        for p, off, nbytes, _ in entries:
            flat[off:off + nbytes].copy_(p.data.contiguous().reshape(-1).view(torch.uint8))
            p.data = torch.empty(0, dtype=p.dtype)          # until finish() gives it a slot
        self.layers.append(layer)
        self.host.append(flat)
        self.entries.append(entries)
        self.offloaded_bytes += sum(e[2] for e in entries)

    def finish(self) -> None:
        n = len(self.layers)
        self.num_slots = min(NUM_SLOTS, n)
        slot_bytes = max(h.numel() for h in self.host)
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8, device=self.device)
                      for _ in range(self.num_slots)]
        self.resident = [None] * self.num_slots
        for pos, entries in enumerate(self.entries):
            slot = self.slots[pos % self.num_slots]
            for p, off, nbytes, shape in entries:
                p.data = slot[off:off + nbytes].view(p.dtype).view(shape)
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.copied = [torch.cuda.Event() for _ in range(n)]
            self.slot_free = [torch.cuda.Event() for _ in range(self.num_slots)]
        for pos in range(self.num_slots):
            self._copy(pos)
        for pos, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(functools.partial(self._before, pos))
            layer.register_forward_hook(functools.partial(self._after, pos))
        logger.info("cpu_offload_gb: %d layers (%.2f GiB) in pinned CPU memory, streamed "
                    "through %d GPU slots of %.2f GiB", n, self.offloaded_bytes / 2**30,
                    self.num_slots, slot_bytes / 2**30)

    # ------------------------------------------------------------ the rotation
    def _copy(self, pos: int) -> None:
        slot = pos % self.num_slots
        src = self.host[pos]
        dst = self.slots[slot][:src.numel()]
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                # waiting on a never-recorded event is a no-op (the first pass)
                self.copy_stream.wait_event(self.slot_free[slot])
                dst.copy_(src, non_blocking=True)
                self.copied[pos].record(self.copy_stream)
        else:
            dst.copy_(src)
        self.resident[slot] = pos

    def _before(self, pos: int, module, args) -> None:
        if self.resident[pos % self.num_slots] != pos:
            self._copy(pos)
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.copied[pos])

    def _after(self, pos: int, module, args, output) -> None:
        n, slots = len(self.layers), self.num_slots
        slot = pos % slots
        nxt = pos + slots if pos + slots < n else slot      # the slot's next user
        if self.resident[slot] == nxt:
            return                                          # still there (n <= slots)
        if self.cuda:
            self.slot_free[slot].record(torch.cuda.current_stream(self.device))
        self._copy(nxt)


def offload_model(model: nn.Module, device: torch.device, max_bytes: int,
                  process: Callable[[nn.Module], None]) -> LayerOffloader:
    """Move a CPU-built, loaded model to `device`, keeping the first decoder layers' weights
    (whole layers, until at least max_bytes) in pinned CPU memory. `process(module)` runs on
    every module (not recursively) once it is on the device: quantization's
    process_weights_after_loading, which may change a layer's layout and size."""
    name, layers = decoder_layers(model)
    for mod_name, mod in model.named_modules():
        if mod_name != name and not mod_name.startswith(name + "."):
            move_tensors(mod, device, recurse=False)
            process(mod)
    offloader = LayerOffloader(device)
    for layer in layers:
        move_tensors(layer, device)
        for mod in layer.modules():
            process(mod)
        if offloader.offloaded_bytes < max_bytes:
            offloader.add(layer)
    if offloader.offloaded_bytes < max_bytes:
        logger.warning("cpu_offload_gb=%.2f asks for more than the decoder layers hold "
                       "(%.2f GiB): all of them are offloaded", max_bytes / 2**30,
                       offloader.offloaded_bytes / 2**30)
    offloader.finish()
    model.cpu_offloader = offloader
    return offloader
