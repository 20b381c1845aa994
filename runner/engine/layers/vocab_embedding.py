"""Token embedding and LM head, split over the vocabulary across tensor-parallel ranks.

With use_triton the LM head computes the logits of a small batch (at most GEMV_MAX_M rows, on
CUDA) with kernels/gemv.py, like the linear layers; larger batches use F.linear."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from runner.engine.layers.linear import gemv_linear, use_gemv


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, tp_rank: int = 0,
                 tp_size: int = 1, all_reduce: Callable = _identity):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.tp_rank, self.tp_size, self.all_reduce = tp_rank, tp_size, all_reduce
        self.shard_size = -(-num_embeddings // tp_size)
        self.vocab_start = tp_rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, embedding_dim),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        end = min(self.vocab_start + self.shard_size, loaded.shape[0])
        shard = loaded[self.vocab_start:end] if end > self.vocab_start else \
            torch.empty(0, loaded.shape[1])
        if shard.shape[1] != param.shape[1] or shard.shape[0] > param.shape[0]:
            raise ValueError(f"embedding shape mismatch: parameter {tuple(param.shape)} vs "
                             f"checkpoint {tuple(loaded.shape)}")
        param.data.zero_()
        param.data[:shard.shape[0]].copy_(shard)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mask = (local >= 0) & (local < self.shard_size)
        out = F.embedding(local.clamp(0, self.shard_size - 1), self.weight)
        return self.all_reduce(out * mask.unsqueeze(-1).to(out.dtype))


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for this rank's vocabulary shard; the model runner gathers the shards."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_rank: int = 0,
                 tp_size: int = 1, all_reduce: Callable = _identity, use_triton: bool = False):
        super().__init__(num_embeddings, embedding_dim, tp_rank, tp_size, all_reduce)
        self.use_triton = use_triton

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if use_gemv(self.use_triton, hidden):
            logits = gemv_linear(hidden, self.weight)                # [N, shard]
        else:
            logits = F.linear(hidden, self.weight)                   # [N, shard]
        if self.tp_size == 1:
            return logits[:, :self.num_embeddings]
        return logits
