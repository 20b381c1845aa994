"""The Llama family in one decoder: Llama-2, Llama-3 (GQA, rope scaling), Mistral (sliding
window), Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm).

The relatives differ by a few flags, not by code paths, so every fast path serves all of them:
the Triton GEMV of decode-size batches (layers/linear.py), piecewise CUDA graphs
(`forward_piece`, cuda_graphs.py), the fp8 KV cache (attention.py) and tensor parallelism
(the parallel layers shard by rank). What sets a family apart:

    Family.qkv_bias  biases on q/k/v but not on o_proj             Qwen2
    Family.qk_norm   RMSNorm over head_dim of each q and k head,
                     before the rotary embedding                   Qwen3
    config           attention_bias (q/k/v/o biases), mlp_bias, head_dim, rope_theta /
                     rope_scaling / rope_parameters, sliding_window (+ layer_types,
                     use_sliding_window, max_window_layers), tie_word_embeddings

One decoder-only transformer over a flat token batch (no padding): every tensor below is
[T, ...] where T is the number of tokens this step computes across all sequences. Each layer is
pre-RMSNorm attention and a SiLU-gated MLP with the residual carried beside the hidden states
(the norms fuse the add). Attention reads and writes the paged KV cache through
`AttentionMetadata`; the model itself keeps no cache. Checkpoint tensors are streamed through
`load_weights`, which maps HF names onto the fused qkv_proj / gate_up_proj parameters and calls
each parameter's weight loader. Quantized checkpoints (fp8, AWQ, GPTQ) load the same way: each
linear layer gets its module name (`prefix`, the checkpoint's) and the ParallelContext's
quant_config, which decide its parameters (runner/engine/quantization/).
"""
from __future__ import annotations

from dataclasses import dataclass
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
from runner.engine.models.weights import load_weights
from runner.engine.parallel import ParallelContext


@dataclass(frozen=True)
class Family:
    """What a relative changes in the Llama layout (model_type -> FAMILIES)."""
    qkv_bias: bool = False      # q/k/v carry biases whatever attention_bias says; o_proj none
    qk_norm: bool = False       # per-head RMSNorm of q and k (weights [head_dim]) before rope


FAMILIES = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm=True),
}


def family_of(config) -> Family:
    # configs of other Llama-shaped model_types (GGUF conversions say "llama") take Llama's
    return FAMILIES.get(getattr(config, "model_type", ""), Family())


def rope_args(config) -> tuple[float, Optional[dict]]:
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


def sliding_window(config, layer_idx: int) -> Optional[int]:
    """The attention window of layer `layer_idx`, as HF applies it: Mistral's sliding_window
    covers every layer; Qwen2/Qwen3 configs turn it on with `use_sliding_window` and say which
    layers it covers (`layer_types`, or in older configs the layers from `max_window_layers`)."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    if hasattr(config, "max_window_layers"):
        return window if layer_idx >= config.max_window_layers else None
    return window


class LlamaMLP(nn.Module):
    def __init__(self, config, pc: ParallelContext, prefix: str = "mlp"):
        super().__init__()
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise NotImplementedError(f"{getattr(config, 'model_type', 'llama')} hidden_act="
                                      f"{act!r} is not supported; only 'silu'")
        hidden, inter = config.hidden_size, config.intermediate_size
        bias = bool(getattr(config, "mlp_bias", False))
        quant = dict(quant_config=pc.quant_config, use_triton=pc.use_triton)
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [inter] * 2, bias,
                                                       **pc.tp_kwargs(), **quant,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(inter, hidden, bias, **pc.tp_kwargs(),
                                           all_reduce=pc.all_reduce, **quant,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul(pc.use_triton)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))   # [T, H] -> [T, 2I] -> [T, H]


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, family: Family, pc: ParallelContext,
                 prefix: str = "self_attn"):
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        total_kv = getattr(config, "num_key_value_heads", None) or total_heads
        # Qwen3 and Mistral-Nemo set head_dim != hidden / heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // total_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        quant = dict(quant_config=pc.quant_config, use_triton=pc.use_triton)
        self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, total_heads, total_kv,
                                          family.qkv_bias or attention_bias, **pc.tp_kwargs(),
                                          **quant, prefix=f"{prefix}.qkv_proj")
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, hidden,
                                        attention_bias and not family.qkv_bias, **pc.tp_kwargs(),
                                        all_reduce=pc.all_reduce, **quant,
                                        prefix=f"{prefix}.o_proj")
        self.q_norm = self.k_norm = None
        if family.qk_norm:        # one weight of size head_dim, shared by all heads
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, pc.use_triton)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, pc.use_triton)
        theta, scaling = rope_args(config)
        self.rotary_emb = RotaryEmbedding(
            self.head_dim, config.max_position_embeddings, theta, scaling,
            getattr(config, "partial_rotary_factor", 1.0), pc.use_triton)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, sliding_window(config, layer_idx),
                              pc.use_triton)

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)                                  # [T, (Hq + 2Hk) D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        d = self.head_dim
        if self.q_norm is not None:
            q = self.q_norm(q.reshape(-1, d))                        # [T Hq, D]
            k = self.k_norm(k.reshape(-1, d))                        # [T Hk, D]
        q, k = self.rotary_emb(positions, q.view(-1, self.num_heads, d),
                               k.view(-1, self.num_kv_heads, d))     # rotated in place
        out = self.attn(q.reshape(-1, self.q_size), k.reshape(-1, self.kv_size), v,
                        kv_cache, meta)                              # [T, Hq D]
        return self.o_proj(out)                                      # [T, H]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, family: Family, pc: ParallelContext,
                 prefix: str = "layers.0"):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, family, pc, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(config, pc, f"{prefix}.mlp")
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


class LlamaModel(nn.Module):
    def __init__(self, config, family: Family, pc: ParallelContext, prefix: str = "model"):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   **pc.tp_kwargs(), all_reduce=pc.all_reduce)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, family, pc,
                                                      f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
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
    """Every family of this file; the registry maps LlamaForCausalLM, MistralForCausalLM,
    Qwen2ForCausalLM and Qwen3ForCausalLM here, and the config's model_type picks the Family."""
    supports_tensor_parallel = True
    supports_quantization = True
    # fused parameter -> its checkpoint parts (quantization ignore lists name the parts)
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                              "gate_up_proj": ["gate_proj", "up_proj"]}
    # the layers that take LoRA adapters (runner/engine/lora/); the fused ones' HF parts above
    supported_lora_modules = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
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
        self.family = family_of(config)
        self.quantized = pc.quant_config is not None
        self.model = LlamaModel(config, self.family, pc)
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
        return self.lm_head.compute_logits(hidden)                   # [N, H] -> [N, V]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Stream (HF name, tensor) pairs into the parameters; returns the names loaded."""
        return load_weights(self, weights, stacked_params_mapping=self.stacked_params_mapping,
                            tied_lm_head=self.tie_word_embeddings,
                            rename=lambda n: None if "rotary_emb.inv_freq" in n else n,
                            skip_missing_bias=self.quantized)
