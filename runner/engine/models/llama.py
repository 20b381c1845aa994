"""The Llama family: Llama-2, Llama-3 (GQA, rope scaling), Mistral, Qwen2 (q/k/v bias).

One decoder-only transformer over a flat token batch (no padding): every tensor below is
[T, ...] where T is the number of tokens this step computes across all sequences. Attention reads
and writes the paged KV cache through `AttentionMetadata`; the model itself keeps no cache.
Checkpoint tensors are streamed through `load_weights`, which maps HF names onto the fused
qkv_proj / gate_up_proj parameters and calls each parameter's weight loader.
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


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, bias: bool, pc: ParallelContext):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [intermediate] * 2, bias,
                                                       **pc.tp_kwargs(), use_triton=pc.use_triton)
        self.down_proj = RowParallelLinear(intermediate, hidden, bias, **pc.tp_kwargs(),
                                           all_reduce=pc.all_reduce, use_triton=pc.use_triton)
        self.act_fn = SiluAndMul(pc.use_triton)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))   # [T, H] -> [T, 2I] -> [T, H]


class LlamaAttention(nn.Module):
    def __init__(self, config, pc: ParallelContext, qkv_bias: bool):
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        total_kv = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // total_heads
        self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, total_heads, total_kv,
                                          qkv_bias, **pc.tp_kwargs(), use_triton=pc.use_triton)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, hidden,
                                        getattr(config, "attention_bias", False) and not
                                        qkv_bias_only(config), **pc.tp_kwargs(),
                                        all_reduce=pc.all_reduce, use_triton=pc.use_triton)
        rope_scaling = getattr(config, "rope_scaling", None)
        rope_theta = getattr(config, "rope_theta", None)
        rope_params = getattr(config, "rope_parameters", None)
        if rope_theta is None and isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta")
            if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
                rope_scaling = rope_params
        self.rotary_emb = RotaryEmbedding(
            self.head_dim, config.max_position_embeddings, float(rope_theta or 10000.0),
            rope_scaling, getattr(config, "partial_rotary_factor", 1.0), pc.use_triton)
        window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) is False:
            window = None
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, window, pc.use_triton)

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)                                  # [T, (Hq + 2Hk) D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q.view(-1, self.num_heads, self.head_dim),
                               k.view(-1, self.num_kv_heads, self.head_dim))
        out = self.attn(q.reshape(-1, self.q_size), k.reshape(-1, self.kv_size), v,
                        kv_cache, meta)                              # [T, Hq D]
        return self.o_proj(out)


def qkv_bias_only(config) -> bool:
    """Qwen2 has biases on q/k/v but not on o_proj."""
    return getattr(config, "model_type", "") == "qwen2"


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, pc: ParallelContext, qkv_bias: bool):
        super().__init__()
        self.self_attn = LlamaAttention(config, pc, qkv_bias)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size,
                            getattr(config, "mlp_bias", False), pc)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pc.use_triton)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                                pc.use_triton)

    def forward(self, positions, hidden, residual: Optional[torch.Tensor], kv_cache, meta):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config, pc: ParallelContext, qkv_bias: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   **pc.tp_kwargs(), all_reduce=pc.all_reduce)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, pc, qkv_bias)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pc.use_triton)

    def forward(self, input_ids, positions, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        return self.forward_piece(range(len(self.layers)), input_ids, positions, None, None,
                                  kv_caches, meta)[0]

    def forward_piece(self, layers: range, input_ids, positions, hidden, residual,
                      kv_caches: list[torch.Tensor], meta: AttentionMetadata):
        """Layers `layers` (consecutive) of the forward: from the embedding when they start at
        0, through the final norm when they end at the last. -> (hidden [T, H], residual or
        None after the norm). CUDA graphs capture decode in such pieces (cuda_graphs.py)."""
        if layers.start == 0:
            hidden, residual = self.embed_tokens(input_ids), None        # [T, H]
        for i in layers:
            hidden, residual = self.layers[i](positions, hidden, residual, kv_caches[i], meta)
        if layers.stop == len(self.layers):
            hidden, residual = self.norm(hidden, residual)[0], None
        return hidden, residual


class LlamaForCausalLM(nn.Module):
    supports_tensor_parallel = True
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
        qkv_bias = getattr(config, "model_type", "") == "qwen2" or getattr(
            config, "attention_bias", False)
        self.model = LlamaModel(config, pc, qkv_bias)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, **pc.tp_kwargs(),
                                      use_triton=pc.use_triton)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # the paged KV cache's shape, read by the model runner (per tensor-parallel rank)
        attn = self.model.layers[0].self_attn
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = attn.num_kv_heads
        self.head_dim = attn.head_dim

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def forward_piece(self, layers: range, input_ids, positions, hidden, residual, kv_caches,
                      meta):
        return self.model.forward_piece(layers, input_ids, positions, hidden, residual,
                                        kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Stream (HF name, tensor) pairs into the parameters; returns the names loaded."""
        return load_weights(self, weights, stacked_params_mapping=self.stacked_params_mapping,
                            tied_lm_head=self.tie_word_embeddings,
                            rename=lambda n: None if "rotary_emb.inv_freq" in n else n)
