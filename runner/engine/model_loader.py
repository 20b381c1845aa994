"""Build the model for a ModelConfig and stream its checkpoint into it.

The model is constructed directly on the target device in the target dtype (no CPU copy of the
full model), then the checkpoint's tensors are streamed one at a time from safetensors files
(memory-mapped) or PyTorch .bin files into each parameter's weight loader. load_format='dummy'
fills every parameter with small random values instead: the real shapes, no files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Iterator

import torch
from torch import nn

from runner.engine.config import ModelConfig, weight_files_in
from runner.engine.models import get_model_class
from runner.engine.layers.checkpoint import CheckpointSlice
from runner.engine.parallel import ParallelContext

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
                             high: float = 1e-3) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)       # keep activations at a sane scale through the layers
        else:
            param.data.uniform_(low, high, generator=gen)


def get_model(model_config: ModelConfig, device: torch.device,
              pc: ParallelContext | None = None) -> nn.Module:
    """The model (decoder or encoder, from the registry) on `device` in the config's dtype,
    with its checkpoint loaded."""
    cls = get_model_class(model_config.hf_config)
    with _default_dtype(model_config.dtype), torch.device(device):
        model = cls(model_config.hf_config, pc)
    model.eval()
    if model_config.load_format == "dummy":
        initialize_dummy_weights(model, model_config.seed)
        return model
    files = _checkpoint_files(model_config)
    # tensor-parallel families take lazy slices (their weight loaders narrow them to this
    # rank's shard), so each rank reads only its part of the files
    lazy = bool(getattr(cls, "supports_tensor_parallel", False))
    it = (safetensors_weights_iterator(files, lazy) if files[0].endswith(".safetensors")
          else pt_weights_iterator(files))
    loaded = model.load_weights(it)
    expected = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"checkpoint in {model_config.model_path!r} lacks {len(missing)} "
                         f"parameters, e.g. {missing[:5]}")
    return model
