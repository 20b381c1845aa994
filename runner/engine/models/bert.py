"""BERT-family encoder (HF `BertModel` architecture) for embedding models, and
`BertForSequenceClassification` (the encoder + BERT's pooler + a linear classifier) for
classification and cross-encoder (LLM.score) models.

    input_ids [B, T], token_type_ids [B, T], positions [B, T], attention_mask [B, 1, Tq, Tk]
      -> embeddings: word + position + token_type, LayerNorm            [B, T, hidden]
      -> N x BertLayer: bidirectional self-attention + residual + LayerNorm (post-norm),
                        GELU FFN + residual + LayerNorm                 [B, T, hidden]
      -> last hidden states (no pooler head: pooling lives in runner/engine/pooling.py)
    BertForSequenceClassification.compute_head(CLS hidden [B, hidden])
      -> dense + tanh (BERT's pooler) -> classifier                      [B, num_labels]

There is no KV cache: an encoder sees each prompt once, in a padded batch ([B, T] with a
key-padding mask [B, 1, 1, T], built by runner/engine/pooling.py).
`load_weights` maps checkpoint names (BertModel's, or a `bert.`-prefixed head model's) onto this
module's parameters and returns the names it filled.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings,
                                                config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        # all three [B, T] -> [B, T, hidden]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        h = config.hidden_size
        self.qkv_proj = nn.Linear(h, 3 * h)     # query, key, value fused: one matmul
        self.o_proj = nn.Linear(h, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, T, h = x.shape
        q, k, v = self.qkv_proj(x).split(h, dim=-1)                       # 3 x [B, T, h]
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in (q, k, v))                                    # [B, H, T, D]
        # bool mask: True where a query may attend to a key; no causal mask (bidirectional)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                             scale=1.0 / math.sqrt(self.head_dim))
        out = out.transpose(1, 2).reshape(B, T, h)                        # [B, T, h]
        return self.LayerNorm(self.o_proj(out) + x)                       # post-norm residual


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        act = getattr(config, "hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise NotImplementedError(f"hidden_act={act!r} is not supported for BERT; supported: "
                                      f"{sorted(_ACTIVATIONS)}.")
        self.act = _ACTIVATIONS[act]
        self.attention = BertSelfAttention(config)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, attention_mask)                             # [B, T, h]
        return self.LayerNorm(self.down_proj(self.act(self.up_proj(x))) + x)


class BertModel(nn.Module):
    """The encoder; forward returns the last hidden states [B, T, hidden]."""

    def __init__(self, config, pc=None):
        super().__init__()
        pe = getattr(config, "position_embedding_type", "absolute")
        if pe != "absolute":
            raise NotImplementedError(f"position_embedding_type={pe!r} is not supported for "
                                      "BERT; only 'absolute'.")
        if getattr(config, "is_decoder", False):
            raise NotImplementedError("BERT with is_decoder=True (causal) is not supported; "
                                      "only the bidirectional encoder.")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, positions)         # [B, T, h]
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x

    def hidden_states(self, input_ids: torch.Tensor, mask: torch.Tensor,
                      token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The pooling runner's entry: a padded batch input_ids/mask [B, T] (prompts
        left-aligned, mask 1 on real tokens) -> last hidden states [B, T, hidden]."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)     # [B, T]
        return self(input_ids, positions, mask.bool()[:, None, None, :], token_type_ids)

    # ----------------------------------------------------------------- weights
    def _target(self, name: str) -> Optional[tuple[str, Optional[int]]]:
        """Checkpoint name -> (this module's parameter name, qkv shard index or None);
        None for tensors the encoder does not use (pooler, MLM head, position_ids)."""
        for prefix in ("bert.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        # very old checkpoints name LayerNorm parameters gamma/beta
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias")
        if name.startswith("embeddings."):
            return (None if name.endswith("position_ids") else name), None
        if not name.startswith("encoder.layer."):
            return None                 # pooler.*, cls.* (MLM/NSP heads)
        idx, rest = name[len("encoder.layer."):].split(".", 1)
        base = f"layers.{idx}."
        shards = {"attention.self.query.": 0, "attention.self.key.": 1,
                  "attention.self.value.": 2}
        for src, shard in shards.items():
            if rest.startswith(src):
                return base + "attention.qkv_proj." + rest[len(src):], shard
        renames = {"attention.output.dense.": "attention.o_proj.",
                   "attention.output.LayerNorm.": "attention.LayerNorm.",
                   "intermediate.dense.": "up_proj.", "output.dense.": "down_proj.",
                   "output.LayerNorm.": "LayerNorm."}
        for src, dst in renames.items():
            if rest.startswith(src):
                return base + dst + rest[len(src):], None
        return None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        filled: dict[str, set] = {}
        h = self.config.hidden_size
        for ckpt_name, tensor in weights:
            target = self._target(ckpt_name)
            if target is None or target[0] is None:
                continue
            name, shard = target
            if name not in params:
                raise ValueError(f"checkpoint tensor {ckpt_name!r} maps to {name!r}, which "
                                 "this BERT model does not have.")
            param = params[name]
            with torch.no_grad():
                dst = param if shard is None else param[shard * h:(shard + 1) * h]
                if dst.shape != tensor.shape:
                    raise ValueError(f"checkpoint tensor {ckpt_name!r} has shape "
                                     f"{tuple(tensor.shape)}, expected {tuple(dst.shape)}.")
                dst.copy_(tensor.to(dst.dtype))
            filled.setdefault(name, set()).add(shard)
        # a fused qkv parameter counts as loaded only when all three shards came
        return {n for n, s in filled.items() if None in s or s >= {0, 1, 2}}


class BertForSequenceClassification(nn.Module):
    """HF's BertForSequenceClassification: CLS hidden state -> pooler (dense + tanh) ->
    classifier [num_labels]. The pooling runner pools CLS and calls compute_head."""

    default_pooling_type = "CLS"

    def __init__(self, config, pc=None):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)        # BertPooler
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def hidden_states(self, input_ids, mask, token_type_ids=None) -> torch.Tensor:
        return self.bert.hidden_states(input_ids, mask, token_type_ids)

    def compute_head(self, pooled: torch.Tensor) -> torch.Tensor:
        # pooled [B, hidden] -> logits [B, num_labels]; dropout is identity at inference
        return self.classifier(torch.tanh(self.pooler(pooled)))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        head = {"bert.pooler.dense.weight": "pooler.weight", "bert.pooler.dense.bias":
                "pooler.bias", "classifier.weight": "classifier.weight",
                "classifier.bias": "classifier.bias"}
        params = dict(self.named_parameters())
        loaded: set[str] = set()

        def encoder_weights():
            for name, tensor in weights:
                if name in head:
                    dst = params[head[name]]
                    if dst.shape != tensor.shape:
                        raise ValueError(f"checkpoint tensor {name!r} has shape "
                                         f"{tuple(tensor.shape)}, expected {tuple(dst.shape)}.")
                    with torch.no_grad():
                        dst.copy_(tensor.to(dst.dtype))
                    loaded.add(head[name])
                else:
                    yield name, tensor

        loaded |= {"bert." + n for n in self.bert.load_weights(encoder_weights())}
        return loaded
