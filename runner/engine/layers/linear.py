"""Linear layers shaped for tensor parallelism, each parameter carrying its own weight loader.

`ColumnParallelLinear` splits the output dimension across ranks, `RowParallelLinear` the input
dimension (its partial outputs are summed across ranks by `all_reduce`). `QKVParallelLinear` and
`MergedColumnParallelLinear` fuse q/k/v and gate/up into one matmul; their weight loaders take
the checkpoint's separate tensors (q_proj, k_proj, ...) and write each into its slice, reading
only this rank's shard when given a lazy CheckpointSlice. With tp_size=1 the shard is the whole
tensor and all_reduce is the identity.

With use_triton, inputs of at most GEMV_MAX_M rows on CUDA (decode steps) go through
kernels/gemv.py, a weight-streaming GEMV, instead of F.linear; everything else, and every layer
built without use_triton, stays on F.linear.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.engine.layers.checkpoint import materialize

# rows (flattened leading dims) up to which use_triton layers run kernels/gemv.py on CUDA; the
# kernel itself takes up to kernels.gemv.MAX_M = 16 (scripts/bench_gemv.py times both sides)
GEMV_MAX_M = 8


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def use_gemv(use_triton: bool, x: torch.Tensor) -> bool:
    """The small-batch gate: Triton backend, a CUDA input, at most GEMV_MAX_M rows."""
    return use_triton and x.is_cuda and 0 < x.numel() <= GEMV_MAX_M * x.shape[-1]


def gemv_linear(x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear through kernels/gemv.py: x [..., K] -> [..., N], leading dims flattened."""
    from kernels.gemv import gemv
    y = gemv(x.reshape(-1, x.shape[-1]), weight, bias)                 # [M, N]
    return y.view(*x.shape[:-1], weight.shape[0])


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: Optional[int],
                 tp_rank: int = 0, tp_size: int = 1, use_triton: bool = False):
        super().__init__()
        self.tp_rank, self.tp_size, self.tp_dim = tp_rank, tp_size, tp_dim
        self.use_triton = use_triton
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
        if use_gemv(self.use_triton, x):
            return gemv_linear(x, self.weight, self.bias)
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
                 tp_rank: int = 0, tp_size: int = 1, use_triton: bool = False):
        assert output_size % tp_size == 0, (output_size, tp_size)
        super().__init__(input_size, output_size // tp_size, bias, 0, tp_rank, tp_size,
                         use_triton)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs (e.g. gate and up) in one matmul."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1, use_triton: bool = False):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size, use_triton)

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
                 bias: bool = False, tp_rank: int = 0, tp_size: int = 1,
                 use_triton: bool = False):
        assert num_heads % tp_size == 0, (num_heads, tp_size)
        self.head_dim = head_dim
        self.num_heads = num_heads // tp_size
        self.num_kv_heads = max(1, num_kv_heads // tp_size)
        self.kv_replicas = max(1, tp_size // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, out, bias, tp_rank, tp_size, use_triton)

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
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
                 use_triton: bool = False):
        assert input_size % tp_size == 0, (input_size, tp_size)
        super().__init__(input_size // tp_size, output_size, bias, 1, tp_rank, tp_size,
                         use_triton)
        self.all_reduce = all_reduce

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        _copy_checked(param, self._shard(loaded, 1) if param.dim() > 1 else loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias joins after the all-reduce (once, not once per rank)
        y = gemv_linear(x, self.weight) if use_gemv(self.use_triton, x) else \
            F.linear(x, self.weight)
        if self.tp_size > 1:
            y = self.all_reduce(y)
        if self.bias is not None:
            y = y + self.bias
        return y
