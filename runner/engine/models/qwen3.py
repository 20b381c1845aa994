"""The Qwen3 dense family (Qwen3-0.6B ... Qwen3-32B): Llama's layout plus per-head q/k RMSNorm.

One decoder-only transformer over a flat token batch (no padding): every tensor below is
[T, ...], T the tokens this step computes across all sequences. Each layer is pre-RMSNorm
attention and a SiLU-gated MLP with the residual carried beside the hidden states (the norms
fuse the add). Attention differs from Llama in two ways: `head_dim` comes from the config (it
need not be hidden_size / num_heads), and q and k each go through an RMSNorm over head_dim, per
head, *before* the rotary embedding. No biases unless `attention_bias`. Layers listed as
"sliding_attention" in `layer_types` (or, in older configs, those from `max_window_layers` on
when `use_sliding_window`) attend over the last `sliding_window` tokens only.

Attention reads and writes the paged KV cache through `AttentionMetadata`. `load_weights` maps
HF names onto the fused qkv_proj / gate_up_proj parameters through their weight loaders.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from runner.engine.attention import Attention, AttentionMetadata
from runner.engine.layers.activation import SiluAndMul
from runner.engine.layers.layernorm import RMSNorm
from runner.engine.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear,
                                         RowParallelLinear)
from runner.engine.layers.rotary_embedding import RotaryEmbedding
from runner.engine.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from runner.engine.parallel import ParallelContext
from runner.engine.models.weights import load_weights


def _rope_args(config) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling) from either the flat (transformers 4) or the rope_parameters
    (transformers 5) form of the config."""
    theta = getattr(config, "rope_theta", None)
    scaling = getattr(config, "rope_scaling", None)
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        theta = theta if theta is not None else params.get("rope_theta")
        if scaling is None and params.get("rope_type", "default") != "default":
            scaling = params
    return float(theta if theta is not None else 10000.0), scaling


def _sliding_window(config, layer_idx: int) -> Optional[int]:
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", False):
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window if layer_idx >= getattr(config, "max_window_layers", 0) else None


class Qwen3MLP(nn.Module):
    def __init__(self, config, pc: ParallelContext):
        super().__init__()
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise NotImplementedError(f"Qwen3 hidden_act={act!r} is not supported; only 'silu'")
        hidden, inter = config.hidden_size, config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [inter] * 2, False,
                                                       **pc.tp_kwargs())
        self.down_proj = RowParallelLinear(inter, hidden, False, **pc.tp_kwargs(),
                                           all_reduce=pc.all_reduce)
        self.act_fn = SiluAndMul(pc.use_triton)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))   # [T, H] -> [T, 2I] -> [T, H]


class Qwen3Attention(nn.Module):
    def __init__(self, config, layer_idx: int, pc: ParallelContext):
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        total_kv = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // total_heads
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, total_heads, total_kv, bias,
                                          **pc.tp_kwargs())
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, hidden, bias,
                                        **pc.tp_kwargs(), all_reduce=pc.all_reduce)
        # one weight of size head_dim, shared by all heads
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, pc.use_triton)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, pc.use_triton)
        theta, scaling = _rope_args(config)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.max_position_embeddings, theta,
                                          scaling, 1.0, pc.use_triton)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, _sliding_window(config, layer_idx),
                              pc.use_triton)

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)                                  # [T, (Hq + 2Hk) D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        d = self.head_dim
        q = self.q_norm(q.reshape(-1, d)).view(-1, self.num_heads, d)     # [T, Hq, D]
        k = self.k_norm(k.reshape(-1, d)).view(-1, self.num_kv_heads, d)  # [T, Hk, D]
        q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q.reshape(-1, self.q_size), k.reshape(-1, self.kv_size), v,
                        kv_cache, meta)                              # [T, Hq D]
        return self.o_proj(out)                                      # [T, H]


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, pc: ParallelContext):
        super().__init__()
        self.self_attn = Qwen3Attention(config, layer_idx, pc)
        self.mlp = Qwen3MLP(config, pc)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pc.use_triton)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                                pc.use_triton)

    def forward(self, positions, hidden, residual: Optional[torch.Tensor], kv_cache, meta):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)    # fused add + norm
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class Qwen3Model(nn.Module):
    def __init__(self, config, pc: ParallelContext):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   **pc.tp_kwargs(), all_reduce=pc.all_reduce)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i, pc)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pc.use_triton)

    def forward(self, input_ids, positions, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)                        # [T, H]
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Qwen3ForCausalLM(nn.Module):
    # checkpoint name fragment -> (fused parameter fragment, shard id)
    stacked_params_mapping = [
        (".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0), (".gate_up_proj", ".up_proj", 1),
    ]

    def __init__(self, config, pc: Optional[ParallelContext] = None):
        super().__init__()
        pc = pc or ParallelContext()
        self.config = config
        self.model = Qwen3Model(config, pc)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, **pc.tp_kwargs())
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # the paged KV cache's shape, read by the model runner (per tensor-parallel rank)
        attn = self.model.layers[0].self_attn
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = attn.num_kv_heads
        self.head_dim = attn.head_dim

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)                   # [N, H] -> [N, V]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Stream (HF name, tensor) pairs into the parameters; returns the names loaded."""
        return load_weights(self, weights, stacked_params_mapping=self.stacked_params_mapping,
                            tied_lm_head=self.tie_word_embeddings,
                            rename=lambda n: None if "rotary_emb.inv_freq" in n else n)
