"""Pooling runner: the engine path of embedding models (LLM.encode).

    prompts -> token ids (tokenizer, special tokens added) -> sorted by length, cut into batches
      (max_num_seqs prompts, max_num_batched_tokens padded tokens) -> encoder forward
      [B, T, hidden] -> pool per prompt (mean / CLS / last token / max) [B, hidden]
      -> optional dimensions cut -> optional L2 normalize -> EmbeddingRequestOutput per prompt

An encoder reads each prompt once, so there is no KV cache, block manager or scheduler here.
How to pool and whether to normalize come from the model folder's sentence-transformers files
(modules.json, the Pooling module's config.json, a Normalize module); a folder without them
pools the CLS token and normalizes, as vLLM does for BERT. PoolingParams(normalize=...) overrides
the folder's choice per request.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from runner.engine.config import EngineConfig
from runner.engine.outputs import EmbeddingOutput, EmbeddingRequestOutput, PoolingParams
from runner.engine.tokenizer import load_tokenizer, parse_prompt
from runner.engine.utils.torch_utils import set_random_seed

logger = logging.getLogger("runner.engine")

POOLING_TYPES = ("MEAN", "CLS", "LAST", "MAX", "MEAN_SQRT_LEN")
# sentence-transformers' Pooling config keys -> our pooling types
_ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS",
    "pooling_mode_lasttoken": "LAST", "pooling_mode_max_tokens": "MAX",
    "pooling_mode_mean_sqrt_len_tokens": "MEAN_SQRT_LEN",
}
_ST_PREFIX = "sentence_transformers.models."


@dataclass
class PoolerConfig:
    pooling_type: str = "CLS"
    normalize: bool = True
    max_seq_length: Optional[int] = None     # sentence_bert_config.json's cap, if any


def load_pooler_config(folder: str) -> PoolerConfig:
    """Read the sentence-transformers module list of a model folder into a PoolerConfig."""
    modules_file = os.path.join(folder, "modules.json")
    max_len = None
    sbert = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(sbert):
        with open(sbert) as fh:
            max_len = json.load(fh).get("max_seq_length")
    if not os.path.isfile(modules_file):
        return PoolerConfig("CLS", True, max_len)
    with open(modules_file) as fh:
        modules = json.load(fh)
    pooling_type, normalize = None, False
    for m in modules:
        kind = m.get("type", "").removeprefix(_ST_PREFIX)
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pooling_type = _read_st_pooling(os.path.join(folder, m.get("path", "")))
        else:
            # a Dense projection, a second transformer, ...: not run here, so refuse loudly
            raise NotImplementedError(
                f"sentence-transformers module {m.get('type')!r} in {modules_file} is not "
                "supported; supported modules: Transformer, Pooling, Normalize.")
    return PoolerConfig(pooling_type or "CLS", normalize, max_len)


def _read_st_pooling(path: str) -> str:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ValueError(f"the Pooling module's config {cfg_file} is missing.")
    with open(cfg_file) as fh:
        cfg = json.load(fh)
    if "pooling_mode" in cfg and isinstance(cfg["pooling_mode"], str):   # newer ST releases
        mode = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST", "max": "MAX",
                "mean_sqrt_len_tokens": "MEAN_SQRT_LEN"}.get(cfg["pooling_mode"])
        if mode is None:
            raise NotImplementedError(f"pooling_mode={cfg['pooling_mode']!r} in {cfg_file} is "
                                      f"not supported; supported: {list(POOLING_TYPES)}.")
        return mode
    modes = [t for k, t in _ST_POOLING_KEYS.items() if cfg.get(k)]
    if len(modes) != 1:
        raise NotImplementedError(
            f"{cfg_file} turns on {len(modes)} pooling modes {modes}; exactly one is supported "
            f"(one of {list(POOLING_TYPES)}).")
    return modes[0]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling_type: str) -> torch.Tensor:
    """hidden [B, T, h], mask [B, T] (1 for real tokens, prompts left-aligned) -> [B, h]."""
    lens = mask.sum(dim=1)                                               # [B]
    m = mask.unsqueeze(-1).to(hidden.dtype)                              # [B, T, 1]
    if pooling_type == "CLS":
        return hidden[:, 0]
    if pooling_type == "LAST":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lens - 1]
    if pooling_type == "MAX":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    summed = (hidden * m).sum(dim=1)                                     # [B, h]
    if pooling_type == "MEAN":
        return summed / lens.unsqueeze(-1).to(hidden.dtype)
    if pooling_type == "MEAN_SQRT_LEN":
        return summed / lens.unsqueeze(-1).to(hidden.dtype).sqrt()
    raise ValueError(f"pooling_type must be one of {list(POOLING_TYPES)}, got {pooling_type!r}.")


class PoolingRunner:
    """Loads an encoder and its tokenizer; `encode` turns prompts into embeddings."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config = mc = config.model_config
        self.scheduler_config = config.scheduler_config
        self.device = config.device_config.device
        self.tokenizer = None if mc.skip_tokenizer_init else load_tokenizer(mc)
        self.pooler_config = load_pooler_config(mc.model_path)
        self.max_model_len = mc.max_model_len
        if self.pooler_config.max_seq_length:
            self.max_model_len = min(self.max_model_len, self.pooler_config.max_seq_length)
        self.model = self._load_model()
        self.stats = {"num_prompt_tokens": 0, "num_forward_passes": 0}
        set_random_seed(mc.seed)      # as vLLM's workers: the global generators start at seed

    def _load_model(self) -> torch.nn.Module:
        from runner.engine.model_loader import get_model
        return get_model(self.model_config, self.device)     # the registry's encoder class

    def get_tokenizer(self):
        return self.tokenizer

    # ------------------------------------------------------------------ inputs
    def _tokenize(self, prompt) -> list[int]:
        _, ids = parse_prompt(prompt, self.tokenizer, self.model_config.hf_config.vocab_size)
        if not ids:
            raise ValueError("a prompt has no tokens; an embedding needs at least one.")
        if len(ids) > self.max_model_len:
            raise ValueError(f"a prompt has {len(ids)} tokens, more than this embedding model's "
                             f"maximum length {self.max_model_len}; shorten it.")
        return ids

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped into batches: longest first, at most max_num_seqs prompts and at most
        max(max_num_batched_tokens, one prompt) padded tokens per batch."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        budget = self.scheduler_config.max_num_batched_tokens
        batches, cur = [], []
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]     # longest first: first is widest
            if cur and (len(cur) >= self.scheduler_config.max_num_seqs
                        or (len(cur) + 1) * width > budget):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    # ----------------------------------------------------------------- forward
    @torch.inference_mode()
    def embed_padded(self, batch_ids: list[list[int]]) -> torch.Tensor:
        """Token id lists -> pooled, un-normalized embeddings [B, hidden] (padded batch)."""
        B, T = len(batch_ids), max(len(x) for x in batch_ids)
        input_ids = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, ids in enumerate(batch_ids):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            mask[b, :len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = torch.arange(T, device=self.device).expand(B, T)           # [B, T]
        attn = mask.bool()[:, None, None, :]                                   # [B, 1, 1, T]
        hidden = self.model(input_ids, positions, attn)                        # [B, T, h]
        self.stats["num_forward_passes"] += 1
        return pool(hidden.float(), mask, self.pooler_config.pooling_type)

    def encode(self, prompts: list, params: list[PoolingParams], request_ids: list[str],
               use_tqdm: bool = False) -> list[EmbeddingRequestOutput]:
        token_ids = [self._tokenize(p) for p in prompts]
        hidden_size = self.model_config.hf_config.hidden_size
        for p in params:
            if p.dimensions is not None and p.dimensions > hidden_size:
                raise ValueError(f"dimensions={p.dimensions} is larger than the model's "
                                 f"embedding size {hidden_size}.")
        results: list[Optional[EmbeddingRequestOutput]] = [None] * len(prompts)
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts), desc="Processed prompts", dynamic_ncols=True)
        try:
            for batch in self._batches([len(x) for x in token_ids]):
                emb = self.embed_padded([token_ids[i] for i in batch])          # [B, h]
                for row, i in zip(emb, batch):
                    results[i] = self._make_output(request_ids[i], row, token_ids[i], params[i])
                self.stats["num_prompt_tokens"] += sum(len(token_ids[i]) for i in batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return results

    def _make_output(self, request_id: str, emb: torch.Tensor, ids: list[int],
                     p: PoolingParams) -> EmbeddingRequestOutput:
        if p.dimensions is not None:        # Matryoshka-style cut, before normalizing
            emb = emb[:p.dimensions]
        normalize = self.pooler_config.normalize if p.normalize is None else p.normalize
        if normalize:
            emb = F.normalize(emb, p=2, dim=-1)
        return EmbeddingRequestOutput(request_id=request_id,
                                      outputs=EmbeddingOutput(embedding=emb.cpu().tolist()),
                                      prompt_token_ids=ids, finished=True)

    def get_stats(self) -> dict:
        return {**self.stats, "device": str(self.device),
                "dtype": str(self.model_config.dtype).replace("torch.", "")}
