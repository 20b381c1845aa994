"""The GPT-2 family (gpt2, gpt2-medium/large/xl, distilgpt2 and GPT-2-shaped fine-tunes).

A pre-LayerNorm decoder with learned absolute positions over a flat token batch (no padding):
every tensor below is [T, ...], T the tokens this step computes across all sequences, and
`positions` holds each token's index in its own sequence (the row of `wpe` it reads).

Per block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a tanh-approximated GELU
(`gelu_new`); one fused c_attn projection for q/k/v, biases everywhere, a final ln_f, and an LM
head tied to `wte`. Scores are scaled by head_dim**-0.5 when `scale_attn_weights` (the default)
and further by 1/(layer_idx + 1) when `scale_attn_by_inverse_layer_idx`.

HF stores GPT-2's linear weights as Conv1D, [in, out]; `load_weights` transposes them to the
engine's [out, in], splits c_attn into q/k/v for QKVParallelLinear's loader, drops the causal-mask
buffers (`attn.bias`, `attn.masked_bias`) older checkpoints carry, and accepts names with or
without the `transformer.` prefix.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from runner.engine.attention import Attention, AttentionMetadata
from runner.engine.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from runner.engine.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from runner.engine.parallel import ParallelContext
from runner.engine.models.weights import load_tensor, load_weights

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}

# Conv1D modules whose checkpoint weight is [in, out]
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _check_supported(config) -> None:
    act = getattr(config, "activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise NotImplementedError(f"GPT-2 activation_function={act!r} is not supported; "
                                  f"supported: {sorted(_ACTIVATIONS)}")
    if getattr(config, "add_cross_attention", False):
        raise NotImplementedError("GPT-2 add_cross_attention=True (encoder-decoder use) is not "
                                  "supported: the engine runs decoder-only models")


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx: int, pc: ParallelContext):
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        if hidden % total_heads:
            raise ValueError(f"GPT-2 n_embd {hidden} is not divisible by n_head {total_heads}")
        self.head_dim = hidden // total_heads
        self.c_attn = QKVParallelLinear(hidden, self.head_dim, total_heads, total_heads, True,
                                        **pc.tp_kwargs())
        self.num_heads = self.c_attn.num_heads
        self.num_kv_heads = self.c_attn.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.c_proj = RowParallelLinear(hidden, hidden, True, **pc.tp_kwargs(),
                                        all_reduce=pc.all_reduce)
        scale = self.head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer_idx + 1)
        self.attn = Attention(self.num_heads, self.head_dim, scale, self.num_kv_heads, None,
                              pc.use_triton)

    def forward(self, hidden: torch.Tensor, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.c_attn(hidden)                                    # [T, 3 Hq D]
        q, k, v = qkv.split([self.q_size] * 3, dim=-1)
        out = self.attn(q, k, v, kv_cache, meta)                     # [T, Hq D]
        return self.c_proj(out)                                      # [T, H]


class GPT2MLP(nn.Module):
    def __init__(self, config, pc: ParallelContext):
        super().__init__()
        hidden = config.hidden_size
        inner = getattr(config, "n_inner", None) or 4 * hidden
        self.c_fc = ColumnParallelLinear(hidden, inner, True, **pc.tp_kwargs())
        self.c_proj = RowParallelLinear(inner, hidden, True, **pc.tp_kwargs(),
                                        all_reduce=pc.all_reduce)
        self.act = _ACTIVATIONS[getattr(config, "activation_function", "gelu_new")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))                   # [T, H] -> [T, I] -> [T, H]


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int, pc: ParallelContext):
        super().__init__()
        eps = getattr(config, "layer_norm_epsilon", 1e-5)
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attn = GPT2Attention(config, layer_idx, pc)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GPT2MLP(config, pc)

    def forward(self, hidden: torch.Tensor, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), kv_cache, meta)     # [T, H]
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config, pc: Optional[ParallelContext] = None):
        super().__init__()
        pc = pc or ParallelContext()
        _check_supported(config)
        self.config = config
        hidden = config.hidden_size
        self.wte = VocabParallelEmbedding(config.vocab_size, hidden, **pc.tp_kwargs(),
                                          all_reduce=pc.all_reduce)
        self.wpe = nn.Embedding(config.max_position_embeddings, hidden)
        self.h = nn.ModuleList(GPT2Block(config, i, pc) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(hidden, eps=getattr(config, "layer_norm_epsilon", 1e-5))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = ParallelLMHead(config.vocab_size, hidden, **pc.tp_kwargs())
        if self.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight
        self.requires_grad_(False)
        # the paged KV cache's shape, read by the model runner (per tensor-parallel rank)
        attn = self.h[0].attn
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = attn.num_kv_heads
        self.head_dim = attn.head_dim

    def forward(self, input_ids, positions, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.wte(input_ids) + self.wpe(positions)           # [T, H]
        for block, kv_cache in zip(self.h, kv_caches):
            hidden = block(hidden, kv_cache, meta)
        return self.ln_f(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)                   # [N, H] -> [N, V]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Stream (HF name, tensor) pairs into the parameters; returns the names loaded."""
        return load_weights(self, weights, tied_lm_head=self.tie_word_embeddings,
                            rename=_rename, custom=_load_conv1d)


def _rename(name: str):
    if name.startswith("transformer."):
        name = name[len("transformer."):]
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return None           # causal-mask buffers of older checkpoints, not parameters
    return name


def _load_conv1d(name: str, param, tensor: torch.Tensor) -> bool:
    """Conv1D weights are stored [in, out]; c_attn (weight and bias) holds q, k, v fused.
    True when handled here."""
    conv1d = name.endswith(_CONV1D)
    if conv1d:
        tensor = tensor.t()                                      # [in, out] -> [out, in]
    if ".attn.c_attn." in name:
        for shard_id, part in zip("qkv", tensor.chunk(3, dim=0)):
            param.weight_loader(param, part, shard_id)
        return True
    if conv1d:
        load_tensor(name, param, tensor)
    return conv1d
