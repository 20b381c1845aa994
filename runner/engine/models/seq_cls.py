"""Decoder-based sequence classifiers and reward models: HF's LlamaForSequenceClassification
(and its Mistral / Qwen2 / Qwen3 relatives), as vLLM runs them: the decoder's last hidden
state of each prompt -> `score` (a linear layer without bias) -> [num_labels].

    hidden_states(input_ids [B, T], mask [B, T]) -> flat token batch [N] (no padding)
      -> LlamaModel over a scratch paged KV cache that lives for this one call (each prompt is
         one prefill; nothing is kept between calls) -> [N, hidden] -> scattered back into the
         padded [B, T, hidden] the pooling runner pools (LAST token)
    compute_head(pooled [B, hidden]) -> score -> logits [B, num_labels]

The decoder layers are models/llama.py's, so weights, families and kernels are shared with the
generative path; only the head differs.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from runner.engine.attention import AttentionMetadata
from runner.engine.models.llama import LlamaForCausalLM, LlamaModel, family_of
from runner.engine.models.weights import load_weights
from runner.engine.parallel import ParallelContext

_BLOCK = 16     # scratch cache block size (tokens)


class LlamaForSequenceClassification(nn.Module):
    default_pooling_type = "LAST"
    stacked_params_mapping = LlamaForCausalLM.stacked_params_mapping

    def __init__(self, config, pc: Optional[ParallelContext] = None):
        super().__init__()
        pc = pc or ParallelContext()
        if pc.tp_size != 1 or pc.quant_config is not None:
            raise NotImplementedError("sequence classifiers run unquantized on one device; "
                                      "use tensor_parallel_size=1 and quantization=None.")
        self.config = config
        self.model = LlamaModel(config, family_of(config), pc)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        attn = self.model.layers[0].self_attn
        self.num_kv_heads, self.head_dim = attn.num_kv_heads, attn.head_dim

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, mask: torch.Tensor,
                      token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T = input_ids.shape
        dev = input_ids.device
        lens = mask.sum(dim=1).tolist()                                        # [B]
        flat_ids = torch.cat([input_ids[b, :n] for b, n in enumerate(lens)])    # [N]
        positions = torch.cat([torch.arange(n, device=dev) for n in lens])      # [N]
        blocks = [-(-n // _BLOCK) for n in lens]
        starts = [sum(blocks[:b]) for b in range(B)]
        block_tables = torch.zeros(B, max(blocks), dtype=torch.int32, device=dev)
        for b in range(B):
            block_tables[b, :blocks[b]] = torch.arange(starts[b], starts[b] + blocks[b])
        slot_mapping = torch.cat([starts[b] * _BLOCK + torch.arange(n, device=dev)
                                  for b, n in enumerate(lens)])                 # [N]
        qs = [0]
        for n in lens:
            qs.append(qs[-1] + n)
        meta = AttentionMetadata(
            slot_mapping=slot_mapping, query_start_loc=qs, seq_lens=lens,
            block_tables=block_tables, max_query_len=max(lens), max_seq_len=max(lens),
            query_start_loc_t=torch.tensor(qs, dtype=torch.int32, device=dev),
            seq_lens_t=torch.tensor(lens, dtype=torch.int32, device=dev),
            prefill_idx=tuple(range(B)))
        dtype = self.score.weight.dtype
        caches = [torch.zeros(2, sum(blocks), _BLOCK, self.num_kv_heads, self.head_dim,
                              dtype=dtype, device=dev) for _ in self.model.layers]
        flat = self.model(flat_ids, positions, caches, meta)                    # [N, h]
        out = flat.new_zeros(B, T, flat.shape[-1])                              # [B, T, h]
        for b, n in enumerate(lens):
            out[b, :n] = flat[qs[b]:qs[b + 1]]
        return out

    def compute_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.score(pooled.to(self.score.weight.dtype))                   # [B, labels]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_weights(self, weights, stacked_params_mapping=self.stacked_params_mapping,
                            rename=lambda n: None if "rotary_emb.inv_freq" in n else n)
