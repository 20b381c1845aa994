"""The OPT family (facebook/opt-125m ... opt-66b, opt-350m with its embedding projections).

A decoder-only transformer with learned absolute positions over a flat token batch (no padding):
every tensor below is [T, ...], T the tokens this step computes across all sequences, and
`positions` holds each token's index in its own sequence. OPT's position table is offset by 2
(rows 0 and 1 are never used for real tokens), so token position p reads row p + 2.

Per layer: LayerNorm before attention and before the FFN (`do_layer_norm_before=True`, most
sizes) or after each residual add (`do_layer_norm_before=False`, opt-350m); ReLU FFN; biases
everywhere unless `enable_bias=False`. When `word_embed_proj_dim` differs from `hidden_size`
(opt-350m) the embeddings are projected in and the final hidden states projected out. The LM
head is tied to the token embedding unless the config says otherwise.

Attention reads and writes the paged KV cache through `AttentionMetadata`. `load_weights` maps
HF names (with or without the `model.` prefix of OPTForCausalLM) onto these parameters and
fuses q/k/v through QKVParallelLinear's weight loader.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.engine.attention import Attention, AttentionMetadata
from runner.engine.layers.linear import (ColumnParallelLinear, QKVParallelLinear,
                                         ReplicatedLinear, RowParallelLinear)
from runner.engine.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from runner.engine.parallel import ParallelContext
from runner.engine.models.weights import load_weights

POSITION_OFFSET = 2   # OPT's learned position table starts real positions at row 2

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


def _activation(config) -> Callable[[torch.Tensor], torch.Tensor]:
    name = getattr(config, "activation_function", "relu")
    if name not in _ACTIVATIONS:
        raise NotImplementedError(f"OPT activation_function={name!r} is not supported; "
                                  f"supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _layer_norm(config) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size,
                        elementwise_affine=getattr(config, "layer_norm_elementwise_affine", True))


class OPTAttention(nn.Module):
    def __init__(self, config, pc: ParallelContext):
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        if hidden % total_heads:
            raise ValueError(f"OPT hidden_size {hidden} is not divisible by num_attention_heads "
                             f"{total_heads}")
        self.head_dim = hidden // total_heads
        bias = getattr(config, "enable_bias", True)
        self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, total_heads, total_heads, bias,
                                          **pc.tp_kwargs())
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.out_proj = RowParallelLinear(hidden, hidden, bias, **pc.tp_kwargs(),
                                          all_reduce=pc.all_reduce)
        # HF scales q by head_dim**-0.5 after the projection; scaling the scores is the same
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, None, pc.use_triton)

    def forward(self, hidden: torch.Tensor, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)                                  # [T, 3 Hq D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        out = self.attn(q, k, v, kv_cache, meta)                     # [T, Hq D]
        return self.out_proj(out)                                    # [T, H]


class OPTDecoderLayer(nn.Module):
    def __init__(self, config, pc: ParallelContext):
        super().__init__()
        bias = getattr(config, "enable_bias", True)
        self.do_layer_norm_before = getattr(config, "do_layer_norm_before", True)
        self.self_attn = OPTAttention(config, pc)
        self.self_attn_layer_norm = _layer_norm(config)
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.ffn_dim, bias,
                                        **pc.tp_kwargs())
        self.fc2 = RowParallelLinear(config.ffn_dim, config.hidden_size, bias, **pc.tp_kwargs(),
                                     all_reduce=pc.all_reduce)
        self.act = _activation(config)
        self.final_layer_norm = _layer_norm(config)

    def forward(self, hidden: torch.Tensor, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        pre = self.do_layer_norm_before
        # attention block: pre-LN (x + attn(ln(x))) or post-LN (ln(x + attn(x)))
        residual = hidden                                            # [T, H]
        if pre:
            hidden = self.self_attn_layer_norm(hidden)
        hidden = residual + self.self_attn(hidden, kv_cache, meta)
        if not pre:
            hidden = self.self_attn_layer_norm(hidden)
        # feed-forward block, same placement of its LayerNorm
        residual = hidden
        if pre:
            hidden = self.final_layer_norm(hidden)
        hidden = residual + self.fc2(self.act(self.fc1(hidden)))     # [T, H] -> [T, F] -> [T, H]
        if not pre:
            hidden = self.final_layer_norm(hidden)
        return hidden


class OPTDecoder(nn.Module):
    def __init__(self, config, pc: ParallelContext):
        super().__init__()
        hidden = config.hidden_size
        proj_dim = getattr(config, "word_embed_proj_dim", None) or hidden
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, proj_dim, **pc.tp_kwargs(),
                                                   all_reduce=pc.all_reduce)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET,
                                            hidden)
        # opt-350m: embeddings live in a smaller space than the layers
        self.project_in = self.project_out = None
        if proj_dim != hidden:
            self.project_in = ReplicatedLinear(proj_dim, hidden, bias=False)
            self.project_out = ReplicatedLinear(hidden, proj_dim, bias=False)
        self.layers = nn.ModuleList(OPTDecoderLayer(config, pc)
                                    for _ in range(config.num_hidden_layers))
        # post-LN models (and checkpoints from before transformers 4.20.1) have no final norm
        self.final_layer_norm = None
        if getattr(config, "do_layer_norm_before", True) and not getattr(
                config, "_remove_final_layer_norm", False):
            self.final_layer_norm = _layer_norm(config)

    def forward(self, input_ids, positions, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)                        # [T, E]
        if self.project_in is not None:
            hidden = self.project_in(hidden)                         # [T, E] -> [T, H]
        hidden = hidden + self.embed_positions(positions + POSITION_OFFSET)   # [T, H]
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden = layer(hidden, kv_cache, meta)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)                        # [T, H] -> [T, E]
        return hidden


class OPTForCausalLM(nn.Module):
    # checkpoint name fragment -> (fused parameter fragment, shard id)
    stacked_params_mapping = [
        (".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
    ]

    def __init__(self, config, pc: Optional[ParallelContext] = None):
        super().__init__()
        pc = pc or ParallelContext()
        self.config = config
        self.decoder = OPTDecoder(config, pc)
        proj_dim = getattr(config, "word_embed_proj_dim", None) or config.hidden_size
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = ParallelLMHead(config.vocab_size, proj_dim, **pc.tp_kwargs())
        if self.tie_word_embeddings:
            self.lm_head.weight = self.decoder.embed_tokens.weight
        self.requires_grad_(False)
        # the paged KV cache's shape, read by the model runner (per tensor-parallel rank)
        attn = self.decoder.layers[0].self_attn
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = attn.num_kv_heads
        self.head_dim = attn.head_dim

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.decoder(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)                   # [N, E] -> [N, V]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Stream (HF name, tensor) pairs into the parameters; returns the names loaded."""
        # OPTForCausalLM saves `model.decoder.*`; original OPTModel checkpoints `decoder.*`
        return load_weights(self, weights, stacked_params_mapping=self.stacked_params_mapping,
                            tied_lm_head=self.tie_word_embeddings,
                            rename=lambda n: n[len("model."):] if n.startswith("model.") else n)
