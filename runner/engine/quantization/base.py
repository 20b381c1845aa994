"""The contract between a linear layer and its quantization method, and the parameter metadata
the linear layers' weight loaders shard by.

    QuantizationConfig (one per model: config.json's quantization_config or `quantization=`)
      .get_linear_method(prefix) -> LinearMethod, or None for a layer left unquantized
    LinearMethod.create_weights(layer, ...)   registers the layer's parameters in the
                                              checkpoint's layout, tagged by set_weight_attrs
      -> checkpoint tensors stream in through the layer's weight loader (layers/linear.py)
    LinearMethod.process_weights_after_loading(layer)   checkpoint layout -> the kernels' layout
    LinearMethod.apply(layer, x [T, K], bias) -> [T, N]

Parameter attributes (all optional; the loader reads them with getattr):

    output_dim   axis of output channels: column-parallel layers shard it and fused layers
                 (qkv_proj, gate_up_proj) place each checkpoint part along it
    input_dim    axis of input channels: row-parallel layers shard it
    packed_dim, pack_factor   the axis that packs pack_factor values per element; offsets and
                 sizes along it are divided by pack_factor
    per_shard    [num_fused_shards]: one value per checkpoint part (static fp8 input scales)
    fill_scalar  a scalar checkpoint tensor fills the part's whole range (per-tensor fp8 weight
                 scales kept per channel)
    optional     a checkpoint may leave it out (create_weights gave it its value)
    dummy_fill   fn(param_data, generator, low, high): load_format='dummy' values for a layout
                 whose uniform noise would not be valid (packed integers, fp8)

Every per-layer tensor a method keeps is a registered Parameter, so that cpu_offload_gb
(layers/offload.py) moves all of a layer's bytes.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Protocol, Sequence

import torch
from torch import nn


def set_weight_attrs(param: torch.Tensor, **attrs) -> torch.Tensor:
    for key, value in attrs.items():
        if hasattr(param, key) and key != "weight_loader":
            raise AttributeError(f"parameter attribute {key!r} is already set")
        setattr(param, key, value)
    return param


def new_param(data: torch.Tensor, **attrs) -> nn.Parameter:
    return set_weight_attrs(nn.Parameter(data, requires_grad=False), **attrs)


def replace_param(layer: nn.Module, name: str, data: torch.Tensor) -> None:
    """Swap a parameter for a new tensor (another layout or dtype) after loading."""
    delattr(layer, name)
    layer.register_parameter(name, nn.Parameter(data, requires_grad=False))


class LinearMethod(Protocol):
    def create_weights(self, layer: nn.Module, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], input_size: int,
                       output_size: int, params_dtype: torch.dtype) -> None: ...

    def process_weights_after_loading(self, layer: nn.Module) -> None: ...

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor: ...


class QuantizationConfig:
    """A model's quantization: the method name and what each linear layer gets."""
    name: str = ""
    # fused parameter -> its checkpoint parts (set from the model class by the model loader)
    packed_modules_mapping: Mapping[str, Sequence[str]] = {}

    def get_linear_method(self, prefix: str, layer: nn.Module) -> Optional[LinearMethod]:
        raise NotImplementedError

    def verify_device(self, device: torch.device, dtype: torch.dtype,
                      use_triton: bool) -> None:
        """Raise a ValueError when this device cannot run the method's kernels."""


def layer_names(prefix: str, mapping: Mapping[str, Sequence[str]]) -> list[str]:
    """The checkpoint names behind a layer prefix: a fused layer's parts, or the prefix."""
    proj = prefix.rsplit(".", 1)[-1]
    if proj in mapping:
        return [prefix[:len(prefix) - len(proj)] + part for part in mapping[proj]]
    return [prefix]


def is_layer_skipped(prefix: str, ignored: Sequence[str],
                     mapping: Mapping[str, Sequence[str]], substring: bool = False) -> bool:
    """Whether a checkpoint's ignore list leaves this layer unquantized. Entries are full module
    names (fp8 `ignored_layers`), substrings (AWQ `modules_to_not_convert`, with substring) or
    "re:" regular expressions (compressed-tensors `ignore`). A fused layer is skipped when all
    its parts are; some but not all is an error (one matmul has one precision)."""
    if not ignored:
        return False

    def match(name: str) -> bool:
        for entry in ignored:
            if entry.startswith("re:"):
                if re.match(entry[3:], name):
                    return True
            elif (entry in name) if substring else (entry == name):
                return True
        return False

    if match(prefix):
        return True
    parts = [match(n) for n in layer_names(prefix, mapping)]
    if any(parts) and not all(parts):
        raise ValueError(f"some but not all parts of the fused layer {prefix!r} are listed as "
                         "unquantized in the checkpoint's quantization_config; one matmul "
                         "needs one precision.")
    return all(parts)
