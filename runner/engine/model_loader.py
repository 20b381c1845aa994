"""Build the model for a ModelConfig and stream its checkpoint into it.

    ModelConfig -> quantization config (runner/engine/quantization/, None: unquantized)
      -> the model class, built on the target device in the target dtype (no CPU copy of the
         full model); its linear layers get their parameters from the quantization method
      -> the checkpoint's tensors, streamed one at a time from safetensors files (memory-mapped)
         or PyTorch .bin files into each parameter's weight loader; or load_format='dummy':
         small random values of the real shapes (valid packed / fp8 values for quantized
         layouts), no files
      -> process_weights_after_loading: every quantized layer turns its checkpoint layout
         into its kernels' layout (fp8 quantization of a 16-bit checkpoint happens here)

With cpu_offload_gb on CUDA the model is built and loaded on the CPU instead, and
layers/offload.py moves it to the GPU layer by layer, keeping the first layers' weights in
pinned CPU memory to stream them in during each forward.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Iterator

import torch
from torch import nn

from runner.engine.config import ModelConfig, weight_files_in
from runner.engine.layers.checkpoint import CheckpointSlice
from runner.engine.layers.linear import LinearBase
from runner.engine.layers.offload import offload_model
from runner.engine.models import get_model_class
from runner.engine.parallel import ParallelContext
from runner.engine.quantization import get_quant_config

logger = logging.getLogger("runner.engine")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def safetensors_weights_iterator(files: list[str], lazy: bool = False
                                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from safetensors files; with `lazy`, (name, CheckpointSlice) whose
    weight loader reads only the shard its rank needs."""
    from safetensors import safe_open
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                yield name, CheckpointSlice(f.get_slice(name)) if lazy else f.get_tensor(name)


def pt_weights_iterator(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        del state


def _checkpoint_files(model_config: ModelConfig) -> list[str]:
    files = weight_files_in(model_config.model_path, model_config.load_format)
    # a sharded checkpoint's index names the files that belong to it; skip stray extras
    index = os.path.join(model_config.model_path, "model.safetensors.index.json")
    if files and files[0].endswith(".safetensors") and os.path.isfile(index):
        with open(index) as fh:
            wanted = set(json.load(fh)["weight_map"].values())
        files = [f for f in files if os.path.basename(f) in wanted]
    return files


def initialize_dummy_weights(model: nn.Module, seed: int, low: float = -1e-3,
                             high: float = 1e-3, device: torch.device | None = None) -> None:
    """Random weights from one generator on `device` (default: the model's), parameter by
    parameter, so a model built on the CPU for offloading gets the same values as one built
    on the device. A parameter with `dummy_fill` (packed integers, fp8) fills itself."""
    device = device or next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        data = param.data if param.device == device else torch.empty_like(param.data,
                                                                            device=device)
        fill = getattr(param, "dummy_fill", None)
        if fill is not None:
            fill(data, gen, low, high)
        elif name.endswith("norm.weight"):
            data.fill_(1.0)             # keep activations at a sane scale through the layers
        else:
            data.uniform_(low, high, generator=gen)
        if data is not param.data:
            param.data.copy_(data)


def process_weights_after_loading(module: nn.Module) -> None:
    """One module (not its children): a linear layer's checkpoint layout -> its kernels'."""
    if isinstance(module, LinearBase):
        module.process_weights_after_loading()


def _quantized_context(model_config: ModelConfig, cls, device: torch.device,
                       pc: ParallelContext) -> ParallelContext:
    quant_config = get_quant_config(model_config)
    if quant_config is None:
        return pc
    if not getattr(cls, "supports_quantization", False):
        raise NotImplementedError(
            f"quantization={model_config.quantization!r} is not supported for "
            f"{model_config.architecture} yet; quantized checkpoints run on the Llama family "
            "(Llama, Mistral, Qwen2, Qwen3).")
    quant_config.packed_modules_mapping = cls.packed_modules_mapping
    quant_config.verify_device(device, model_config.dtype, pc.use_triton)
    return dataclasses.replace(pc, quant_config=quant_config)


def get_model(model_config: ModelConfig, device: torch.device,
              pc: ParallelContext | None = None) -> nn.Module:
    """The model (decoder or encoder, from the registry) on `device` in the config's dtype,
    with its checkpoint loaded."""
    cls = get_model_class(model_config.hf_config)
    pc = _quantized_context(model_config, cls, device, pc or ParallelContext())
    offload_bytes = int(getattr(model_config, "cpu_offload_gb", 0) * 2**30) \
        if device.type == "cuda" else 0
    build_device = torch.device("cpu") if offload_bytes else device
    with _default_dtype(model_config.dtype), torch.device(build_device):
        model = cls(model_config.hf_config, pc)
    model.eval()
    if model_config.load_format == "dummy":
        initialize_dummy_weights(model, model_config.seed, device=device)
    else:
        _load_checkpoint(model, model_config, cls)
    if offload_bytes:
        offload_model(model, device, offload_bytes, process_weights_after_loading)
    else:
        for module in model.modules():
            process_weights_after_loading(module)
    return model


def _load_checkpoint(model: nn.Module, model_config: ModelConfig, cls) -> None:
    files = _checkpoint_files(model_config)
    # tensor-parallel families take lazy slices (their weight loaders narrow them to this
    # rank's shard), so each rank reads only its part of the files
    lazy = bool(getattr(cls, "supports_tensor_parallel", False))
    it = (safetensors_weights_iterator(files, lazy) if files[0].endswith(".safetensors")
          else pt_weights_iterator(files))
    loaded = model.load_weights(it)
    expected = {n for n, p in model.named_parameters(remove_duplicate=False)
                if not getattr(p, "optional", False)}
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"checkpoint in {model_config.model_path!r} lacks {len(missing)} "
                         f"parameters, e.g. {missing[:5]}")
