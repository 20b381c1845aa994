"""Streaming a checkpoint's (name, tensor) pairs into a model's parameters, for every family.

Checkpoint names are mapped onto the model's parameters: fused parameters (qkv_proj,
gate_up_proj) take their checkpoint parts through `stacked_params_mapping` entries
(fused fragment, checkpoint fragment, shard id) and the parameter's weight loader; everything
else goes through its weight loader or a shape-checked copy. A family adapts names with
`rename` (return None to skip a tensor) and handles special tensors with `custom`.

Quantized checkpoints carry per-layer tensors besides `weight` (qweight, scales, weight_scale,
...): they map the same way, onto the parameters the layer's quantization method registered.
GPTQ checkpoints often store a zero `.bias` for layers that have none; with
`skip_missing_bias` such a tensor is dropped, as vLLM drops it.

A tensor may arrive as a `CheckpointSlice` (a safetensors slice not read yet): the parallel
layers' weight loaders narrow it to their rank's shard, so each tensor-parallel rank reads only
its part of the file. Anything else gets it materialized first.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from runner.engine.layers.checkpoint import materialize


def load_tensor(name: str, param: nn.Parameter, tensor: torch.Tensor) -> None:
    loader = getattr(param, "weight_loader", None)
    if loader is not None:
        loader(param, tensor)
        return
    tensor = materialize(tensor)
    if tuple(param.shape) != tuple(tensor.shape):
        raise ValueError(f"{name}: shape {tuple(param.shape)} vs checkpoint "
                         f"{tuple(tensor.shape)}")
    param.data.copy_(tensor)


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], *,
                 stacked_params_mapping: Sequence[tuple[str, str, object]] = (),
                 tied_lm_head: bool = False,
                 rename: Optional[Callable[[str], Optional[str]]] = None,
                 custom: Optional[Callable[[str, nn.Parameter, torch.Tensor], bool]] = None,
                 skip_missing_bias: bool = False) -> set[str]:
    """Returns the names of the parameters loaded (a tied LM head counts as loaded)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    owner = type(model).__name__
    for name, tensor in weights:
        if rename is not None:
            name = rename(name)
            if name is None:
                continue
        if tied_lm_head and name == "lm_head.weight":
            continue          # tied checkpoints sometimes carry a copy; the embedding wins
        for fused, part, shard_id in stacked_params_mapping:
            if part in name:
                target = name.replace(part, fused)
                if skip_missing_bias and target.endswith(".bias") and target not in params:
                    break
                if target not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no parameter in {owner}")
                params[target].weight_loader(params[target], tensor, shard_id)
                loaded.add(target)
                break
        else:
            if skip_missing_bias and name.endswith(".bias") and name not in params:
                continue
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no parameter in {owner}")
            if custom is not None:
                tensor = materialize(tensor)
            if custom is None or not custom(name, params[name], tensor):
                load_tensor(name, params[name], tensor)
            loaded.add(name)
    if tied_lm_head:
        loaded.add("lm_head.weight")
    return loaded
