"""Linear layers shaped for tensor parallelism, their weights owned by a quantization method.

`ColumnParallelLinear` splits the output dimension across ranks, `RowParallelLinear` the input
dimension (its partial outputs are summed across ranks by `all_reduce`). `QKVParallelLinear` and
`MergedColumnParallelLinear` fuse q/k/v and gate/up into one matmul; their weight loaders take
the checkpoint's separate tensors (q_proj, k_proj, ...) and write each into its slice, reading
only this rank's shard when given a lazy CheckpointSlice. With tp_size=1 the shard is the whole
tensor and all_reduce is the identity.

A layer's parameters come from its method (runner/engine/quantization/base.py): the
unquantized one below (one `weight` [N, K]), or fp8 / AWQ / GPTQ, whose parameters keep the
checkpoint's layout (packed int32 words, scales, zeros, g_idx) until
`process_weights_after_loading` turns them into the kernels' layout. One weight loader serves
them all, steered by each parameter's output_dim / input_dim / packed_dim attributes.

With use_triton, unquantized inputs of at most GEMV_MAX_M rows on CUDA (decode steps) go through
kernels/gemv.py, a weight-streaming GEMV, instead of F.linear; everything else, and every layer
built without use_triton, stays on F.linear.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from runner.engine.layers.checkpoint import materialize
from runner.engine.quantization.base import new_param

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


class UnquantizedLinearMethod:
    """weight [N, K] in the model's dtype; F.linear, or the GEMV for small batches."""

    def create_weights(self, layer, input_size_per_partition: int,
                       output_partition_sizes: Sequence[int], input_size: int,
                       output_size: int, params_dtype: torch.dtype) -> None:
        weight = torch.empty(sum(output_partition_sizes), input_size_per_partition,
                             dtype=params_dtype)
        layer.register_parameter("weight", new_param(weight, output_dim=0, input_dim=1))

    def process_weights_after_loading(self, layer) -> None:
        pass

    def apply(self, layer, x: torch.Tensor, bias: Optional[torch.Tensor] = None):
        if use_gemv(layer.use_triton, x):
            return gemv_linear(x, layer.weight, bias)
        return F.linear(x, layer.weight, bias)


def _numel(tensor) -> int:
    n = 1
    for s in tensor.shape:
        n *= s
    return n


def _copy_checked(param: torch.Tensor, loaded) -> None:
    loaded = materialize(loaded)
    if tuple(param.shape) != tuple(loaded.shape):
        # [N, 1] per-channel scales (compressed-tensors) into [N], [1] into []: same values
        squeeze = [s for s in param.shape if s != 1] == [s for s in loaded.shape if s != 1]
        if not squeeze:
            raise ValueError(f"weight shape mismatch: parameter {tuple(param.shape)} vs "
                             f"checkpoint {tuple(loaded.shape)}")
        loaded = loaded.reshape(param.shape)
    param.copy_(loaded)


class LinearBase(nn.Module):
    """input_size / output_sizes are this rank's partition; tp_dim 0 = column-parallel (the
    output dimension is sharded), 1 = row-parallel, None = replicated."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool,
                 tp_dim: Optional[int], tp_rank: int = 0, tp_size: int = 1,
                 use_triton: bool = False, quant_config=None, prefix: str = ""):
        super().__init__()
        self.tp_rank, self.tp_size, self.tp_dim = tp_rank, tp_size, tp_dim
        self.use_triton = use_triton
        self.prefix = prefix
        self.input_size = input_size
        self.output_size = sum(output_sizes)
        method = quant_config.get_linear_method(prefix, self) if quant_config else None
        self.quant_method = method or UnquantizedLinearMethod()
        full_in = input_size * (tp_size if tp_dim == 1 else 1)
        full_out = self.output_size * (tp_size if tp_dim == 0 else 1)
        self.quant_method.create_weights(self, input_size, list(output_sizes), full_in,
                                         full_out, torch.get_default_dtype())
        if bias:
            self.register_parameter("bias", new_param(torch.empty(self.output_size),
                                                      output_dim=0))
        else:
            self.register_parameter("bias", None)
        for param in self.parameters(recurse=False):
            param.weight_loader = self.weight_loader

    # ------------------------------------------------------------ loading
    def _output_slot(self, shard_id) -> tuple[int, int, int]:
        """(offset, size) of a checkpoint part in this rank's output partition and the rank
        whose slice of the part it holds; logical (unpacked) units."""
        if shard_id is None:
            return 0, self.output_size, self.tp_rank
        raise ValueError(f"{type(self).__name__} has no fused part {shard_id!r}")

    def _shard_index(self, shard_id) -> int:
        return 0

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        target = param.data
        if getattr(param, "per_shard", False):
            _copy_checked(target[self._shard_index(shard_id)], materialize(loaded).reshape(()))
            return
        out_dim, in_dim = getattr(param, "output_dim", None), getattr(param, "input_dim", None)
        if shard_id is not None and out_dim is None:
            return self._load_shared(param, loaded, shard_id)
        column = self.tp_dim == 0 and out_dim is not None
        if column or shard_id is not None:
            offset, size, rank = self._output_slot(shard_id)
            if getattr(param, "packed_dim", None) == out_dim:
                offset, size = offset // param.pack_factor, size // param.pack_factor
            target = target.narrow(out_dim, offset, size)
        if getattr(param, "fill_scalar", False) and _numel(loaded) == 1:
            target.fill_(materialize(loaded).reshape(()).item())
            return
        if column or shard_id is not None:
            if loaded.shape[out_dim] != size or rank:
                loaded = loaded.narrow(out_dim, rank * size, size)
        if self.tp_dim == 1 and in_dim is not None and self.tp_size > 1:
            size = target.shape[in_dim]
            loaded = loaded.narrow(in_dim, self.tp_rank * size, size)
        _copy_checked(target, loaded)

    def _load_shared(self, param: nn.Parameter, loaded, shard_id) -> None:
        """A per-input-channel tensor (GPTQ's g_idx) that every part of a fused layer carries:
        the parts share one input, so they must agree (GPTQ's act order sorts by the input's
        statistics, the same for q, k and v)."""
        if self.tp_dim == 1 and getattr(param, "input_dim", None) is not None:
            raise ValueError("row-parallel layers have no fused parts")
        loaded = materialize(loaded)
        seen = getattr(param, "loaded_parts", None)
        if not seen:
            _copy_checked(param.data, loaded)
            param.loaded_parts = {shard_id}
        elif not torch.equal(param.data,
                             loaded.to(param.device, param.dtype).reshape(param.shape)):
            raise ValueError(f"{self.prefix}: the fused parts' {sorted(map(str, seen))} and "
                             f"{shard_id!r} per-input tensors differ; they cannot share one "
                             "matmul")
        else:
            seen.add(shard_id)

    def process_weights_after_loading(self) -> None:
        """Checkpoint layout -> kernels' layout, once (a second call is a no-op)."""
        if not getattr(self, "weights_processed", False):
            self.quant_method.process_weights_after_loading(self)
            self.weights_processed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False, **kw):
        super().__init__(input_size, [output_size], bias, None, **kw)


class ColumnParallelLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1, use_triton: bool = False,
                 quant_config=None, prefix: str = ""):
        assert output_size % tp_size == 0, (output_size, tp_size)
        super().__init__(input_size, [output_size // tp_size], bias, 0, tp_rank, tp_size,
                         use_triton, quant_config, prefix)


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel outputs (e.g. gate and up) in one matmul."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1, use_triton: bool = False,
                 quant_config=None, prefix: str = ""):
        assert all(s % tp_size == 0 for s in output_sizes), (output_sizes, tp_size)
        self.output_sizes = output_sizes
        super().__init__(input_size, [s // tp_size for s in output_sizes], bias, 0, tp_rank,
                         tp_size, use_triton, quant_config, prefix)

    def _output_slot(self, shard_id):
        if shard_id is None:
            return super()._output_slot(None)
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        return offset, self.output_sizes[shard_id] // self.tp_size, self.tp_rank

    def _shard_index(self, shard_id) -> int:
        return 0 if shard_id is None else int(shard_id)


class QKVParallelLinear(LinearBase):
    """q, k and v projections in one matmul; KV heads are replicated when tp_size exceeds them."""
    SHARDS = ("q", "k", "v")

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, tp_rank: int = 0, tp_size: int = 1,
                 use_triton: bool = False, quant_config=None, prefix: str = ""):
        assert num_heads % tp_size == 0, (num_heads, tp_size)
        self.head_dim = head_dim
        self.num_heads = num_heads // tp_size
        self.num_kv_heads = max(1, num_kv_heads // tp_size)
        self.kv_replicas = max(1, tp_size // num_kv_heads)
        q_size = self.num_heads * head_dim
        kv_size = self.num_kv_heads * head_dim
        super().__init__(hidden_size, [q_size, kv_size, kv_size], bias, 0, tp_rank, tp_size,
                         use_triton, quant_config, prefix)

    def _output_slot(self, shard_id):
        if shard_id is None:
            raise ValueError("QKVParallelLinear loads q, k and v separately")
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q_size), "k": (q_size, kv_size),
                        "v": (q_size + kv_size, kv_size)}[shard_id]
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        return offset, size, rank

    def _shard_index(self, shard_id) -> int:
        return self.SHARDS.index(shard_id)


class RowParallelLinear(LinearBase):
    """Input dimension split across ranks; the partial products are summed by `all_reduce`."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int = 0, tp_size: int = 1,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
                 use_triton: bool = False, quant_config=None, prefix: str = ""):
        assert input_size % tp_size == 0, (input_size, tp_size)
        super().__init__(input_size // tp_size, [output_size], bias, 1, tp_rank, tp_size,
                         use_triton, quant_config, prefix)
        self.all_reduce = all_reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias joins after the all-reduce (once, not once per rank)
        y = self.quant_method.apply(self, x)
        if self.tp_size > 1:
            y = self.all_reduce(y)
        if self.bias is not None:
            y = y + self.bias
        return y
