"""LoRAManager: the model runner's adapters: wrapping the model's linear layers, loading
adapters lazily, the host cache and the device slots (both LRU), and each step's batch.

    LoRAManager(model, lora_config, ...)    wraps every supported linear layer in a LoRALinear
    get_adapter(LoRARequest)                loads / checks the PEFT folder (host cache of
                                            max_cpu_loras adapters, least recently used evicted)
    prepare(SchedulerOutput, qlens)         the step's adapters into slots (max_loras of them,
                                            least recently used evicted, never one this step
                                            uses), then the per-token slot segments
    prepare_capture()                       CUDA graph capture: the segment buffers, no adapter

The model class says which of its layers take adapters (`supported_lora_modules`, engine
module names) and which HF modules a fused one holds (`packed_modules_mapping`); the HF names
(q_proj, ..., down_proj) are the adapters' target modules. The scheduler keeps a step within
max_loras adapters (runner/engine/scheduler.py), so a step's adapters always fit the slots.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch
from torch import nn

from runner.engine.lora.adapter import LoRAAdapter, LoRATarget, load_adapter
from runner.engine.lora.batch import LoRABatch
from runner.engine.lora.config import LoRAConfig
from runner.engine.lora.layers import LoRALinear, LoRAState, part_sizes
from runner.engine.lora.request import LoRARequest

logger = logging.getLogger("runner.engine")


class LoRAManager:
    def __init__(self, model: nn.Module, lora_config: LoRAConfig, device: torch.device,
                 dtype: torch.dtype, max_num_tokens: int, use_triton: bool):
        supported = getattr(type(model), "supported_lora_modules", None)
        if not supported:
            raise NotImplementedError(
                f"enable_lora=True: {type(model).__name__} has no LoRA support yet (the Llama "
                "family has: Llama, Mistral, Qwen2, Qwen3); use enable_lora=False.")
        self.config = lora_config
        self.dtype = dtype
        self.state = LoRAState(use_triton=use_triton)
        self.batch = LoRABatch(max_num_tokens, lora_config.max_loras, device)
        self.layers: dict[str, LoRALinear] = {}
        self.targets: dict[str, LoRATarget] = {}
        self._wrap(model, tuple(supported), getattr(model, "packed_modules_mapping", {}), device)
        self._cache: OrderedDict[int, LoRAAdapter] = OrderedDict()     # host, LRU first
        self._slots: OrderedDict[int, int] = OrderedDict()            # adapter id -> slot
        self._free_slots = list(range(lora_config.max_loras))
        self.capturing = False          # graphs: the segment buffers are always in use
        self.stats = {"num_adapter_loads": 0, "num_slot_loads": 0}

    def _wrap(self, model: nn.Module, supported: tuple, packed: dict,
              device: torch.device) -> None:
        from runner.engine.layers.linear import LinearBase
        cfg = self.config
        for name, module in list(model.named_modules()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in supported or not isinstance(module, LinearBase):
                continue
            sizes = part_sizes(module)
            wrapper = LoRALinear(module, sizes, cfg.max_loras, cfg.max_lora_rank, self.state,
                                 self.dtype, device)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, leaf, wrapper)
            self.layers[name] = wrapper
            prefix = name[:-len(leaf)]
            for i, part in enumerate(packed.get(leaf, [leaf])):
                self.targets[prefix + part] = LoRATarget(name, i, module.input_size, sizes[i])

    # ---------------------------------------------------------------- adapters
    def get_adapter(self, request: LoRARequest) -> LoRAAdapter:
        """The adapter of `request`, loaded (and checked) on first use."""
        rid = request.lora_int_id
        adapter = self._cache.get(rid)
        if adapter is not None and not request.load_inplace:
            if adapter.path != request.lora_path or adapter.lora_name != request.lora_name:
                raise ValueError(
                    f"lora_int_id {rid} is adapter {adapter.lora_name!r} ({adapter.path!r}); "
                    f"LoRARequest({request.lora_name!r}, {rid}, {request.lora_path!r}) reuses "
                    "it. Give each adapter its own lora_int_id.")
            self._cache.move_to_end(rid)
            return adapter
        adapter = load_adapter(rid, request.lora_name, request.lora_path,
                               self.config.max_lora_rank, self.targets)
        self.stats["num_adapter_loads"] += 1
        self._cache[rid] = adapter
        self._cache.move_to_end(rid)
        while len(self._cache) > self.config.max_cpu_loras:
            self._cache.popitem(last=False)
        if rid in self._slots:          # load_inplace: the slot takes the new weights
            self._fill_slot(self._slots[rid], adapter)
        return adapter

    def _fill_slot(self, slot: int, adapter: LoRAAdapter) -> None:
        for name, layer in self.layers.items():
            layer.set_slot(slot, adapter.weights.get(name), adapter.scaling)
        self.stats["num_slot_loads"] += 1

    def _activate(self, requests: dict[int, LoRARequest]) -> dict[int, int]:
        """adapter id -> slot for the step's adapters, loading those not in a slot."""
        if len(requests) > self.config.max_loras:
            raise RuntimeError(f"a step uses {len(requests)} adapters, more than "
                               f"max_loras={self.config.max_loras}")
        for rid in requests:
            if rid in self._slots:
                self._slots.move_to_end(rid)
        for rid, request in requests.items():
            if rid in self._slots:
                continue
            adapter = self.get_adapter(request)
            if self._free_slots:
                slot = self._free_slots.pop(0)
            else:               # the least recently used slot this step does not use
                victim = next(v for v in self._slots if v not in requests)
                slot = self._slots.pop(victim)
            self._fill_slot(slot, adapter)
            self._slots[rid] = slot
        return {rid: self._slots[rid] for rid in requests}

    # -------------------------------------------------------------------- steps
    def prepare(self, out, qlens: np.ndarray) -> None:
        """Set the step's batch: `out` a SchedulerOutput, qlens [n] its tokens per sequence."""
        if not out.lora_requests:
            if self.capturing:
                self.batch.clear()
            self.state.batch = self.batch if self.capturing else None
            return
        slots = self._activate(out.lora_requests)
        seq_slots = np.fromiter((slots.get(s.lora_int_id, -1) for s in out.scheduled),
                                np.int64, len(out.scheduled))
        self.batch.fill(seq_slots, qlens)
        self.state.batch = self.batch

    def prepare_capture(self) -> None:
        """From now on every forward runs the LoRA kernels over the segment buffers (CUDA
        graphs capture them once, with no adapter; a step's tokens then fill them in place)."""
        self.capturing = True
        self.batch.clear()
        self.state.batch = self.batch

    def slot_of(self, lora_int_id: int) -> Optional[int]:
        return self._slots.get(lora_int_id)
