"""Linear layers shaped for tensor parallelism, each parameter carrying its own weight loader.

`ColumnParallelLinear` splits the output dimension across ranks, `RowParallelLinear` the input
dimension (its partial outputs are summed across ranks by `all_reduce`). `QKVParallelLinear` and
`MergedColumnParallelLinear` fuse q/k/v and gate/up into one matmul; their weight loaders take
the checkpoint's separate tensors (q_proj, k_proj, ...) and write each into its slice, reading
only this rank's shard when given a lazy CheckpointSlice. With tp_size=1 the shard is the whole
tensor and all_reduce is the identity.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.engine.layers.checkpoint import materialize


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: Optional[int],
                 tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.tp_rank, self.tp_size, self.tp_dim = tp_rank, tp_size, tp_dim
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def _shard(self, loaded: torch.Tensor, dim: int) -> torch.Tensor:
        if self.tp_size == 1:
            return loaded
        size = loaded.shape[dim] // self.tp_size
        return loaded.narrow(dim, self.tp_rank * size, size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if self.tp_dim is not None and (param.dim() > 1 or self.tp_dim == 0):
            loaded = self._shard(loaded, self.tp_dim if param.dim() > 1 else 0)
        _copy_checked(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _copy_checked(param: torch.Tensor, loaded) -> None:
    loaded = materialize(loaded)
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(f"weight shape mismatch: parameter {tuple(param.shape)} vs checkpoint "
                         f"{tuple(loaded.shape)}")
    param.data.copy_(loaded)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False, **tp):
        super().__init__(input_size, output_size, bias, None, **tp)


class ColumnParallelLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1):
        assert output_size % tp_size == 0, (output_size, tp_size)
        super().__init__(input_size, output_size // tp_size, bias, 0, tp_rank, tp_size)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs (e.g. gate and up) in one matmul."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: Optional[int] = None) -> None:
        if shard_id is None:
            return super().weight_loader(param, loaded)
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        _copy_checked(param.data.narrow(0, offset, size), self._shard(loaded, 0))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; KV heads are replicated when tp_size exceeds them."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, tp_rank: int = 0, tp_size: int = 1):
        assert num_heads % tp_size == 0, (num_heads, tp_size)
        self.head_dim = head_dim
        self.num_heads = num_heads // tp_size
        self.num_kv_heads = max(1, num_kv_heads // tp_size)
        self.kv_replicas = max(1, tp_size // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, out, bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: Optional[str] = None) -> None:
        if shard_id is None:
            raise ValueError("QKVParallelLinear loads q, k and v separately")
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q_size), "k": (q_size, kv_size),
                        "v": (q_size + kv_size, kv_size)}[shard_id]
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        shard = loaded.narrow(0, rank * size, size)
        _copy_checked(param.data.narrow(0, offset, size), shard)


class RowParallelLinear(LinearBase):
    """Input dimension split across ranks; the partial products are summed by `all_reduce`."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity):
        assert input_size % tp_size == 0, (input_size, tp_size)
        super().__init__(input_size // tp_size, output_size, bias, 1, tp_rank, tp_size)
        self.all_reduce = all_reduce

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        _copy_checked(param, self._shard(loaded, 1) if param.dim() > 1 else loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.tp_size > 1:
            y = self.all_reduce(y)
        if self.bias is not None:
            y = y + self.bias
        return y
