"""Pooling runner: the engine path of pooling models (LLM.embed / classify / score / encode).

    prompts (or cross-encoder text pairs) -> token ids (tokenizer, special tokens added; a pair
      also gets its token_type_ids) -> sorted by length, cut into batches (max_num_seqs prompts,
      max_num_batched_tokens padded tokens) -> model.hidden_states [B, T, hidden]
      -> pool per prompt (seq_pooling_type: CLS / LAST / MEAN, or MAX / MEAN_SQRT_LEN from a
         sentence-transformers folder) [B, hidden]
      -> task "embed": optional matryoshka cut, L2 normalize when use_activation
         task "classify": model.compute_head -> logits [B, num_labels] -> (logit - logit_mean)
         / logit_sigma -> the activation (softmax, sigmoid with one label, or what config.json's
         problem_type / sentence_transformers.activation_fn says) when use_activation
      -> PoolingRequestOutput(PoolingOutput(data)) per prompt, in prompt order

An encoder reads each prompt once, so there is no KV cache, block manager or scheduler here
(a decoder classifier builds a scratch cache for the one call: models/seq_cls.py).
The PoolerConfig (vLLM 0.24's fields, runner/engine/pooler_config.py) comes from the model
folder: the sentence-transformers files (modules.json, the Pooling module's config.json, a
Normalize module) for embedding models, else the architecture's default pooling (CLS for BERT,
LAST for decoders); LLM(pooler_config=...) overrides it field by field.
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
from runner.engine.pooler_config import POOLING_TYPES, PoolerConfig
from runner.engine.pooling_outputs import PoolingOutput, PoolingRequestOutput
from runner.engine.pooling_params import PoolingModelInfo, PoolingParams
from runner.engine.tokenizer import load_tokenizer, parse_prompt
from runner.engine.worker_rpc import WorkerRPCMixin
from runner.engine.utils.torch_utils import set_random_seed

logger = logging.getLogger("runner.engine")

# sentence-transformers' Pooling config keys -> our pooling types
_ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS",
    "pooling_mode_lasttoken": "LAST", "pooling_mode_max_tokens": "MAX",
    "pooling_mode_mean_sqrt_len_tokens": "MEAN_SQRT_LEN",
}
_ST_PREFIX = "sentence_transformers.models."


def load_pooler_config(folder: str) -> PoolerConfig:
    """Read the sentence-transformers module list of a model folder into a PoolerConfig."""
    modules_file = os.path.join(folder, "modules.json")
    max_len = None
    sbert = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(sbert):
        with open(sbert) as fh:
            max_len = json.load(fh).get("max_seq_length")
    if not os.path.isfile(modules_file):
        return PoolerConfig(max_seq_length=max_len)
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
    return PoolerConfig(seq_pooling_type=pooling_type, use_activation=normalize,
                        max_seq_length=max_len)


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


def classifier_activation(hf_config):
    """The activation vLLM 0.24 applies to classification logits (get_act_fn): config.json's
    problem_type, else a cross-encoder's sentence_transformers.activation_fn (torch.nn.modules
    only), else softmax, or sigmoid with fewer than two labels."""
    num_labels = getattr(hf_config, "num_labels", 0)
    problem = getattr(hf_config, "problem_type", None) or ""
    if problem == "regression":
        return lambda x: x
    if problem == "multi_label_classification":
        return torch.sigmoid
    name = None
    st = getattr(hf_config, "sentence_transformers", None)
    if problem != "single_label_classification":
        if isinstance(st, dict) and "activation_fn" in st:
            name = st["activation_fn"]
        elif getattr(hf_config, "sbert_ce_default_activation_function", None) is not None:
            name = hf_config.sbert_ce_default_activation_function
    if name is not None:
        if not name.startswith("torch.nn.modules."):
            raise ValueError("Loading of activation functions is restricted to "
                             f"torch.nn.modules for security reasons, got {name!r}")
        import importlib
        module, _, cls = name.rpartition(".")
        return getattr(importlib.import_module(module), cls)()
    if num_labels < 2:
        return torch.sigmoid
    return lambda x: F.softmax(x, dim=-1)


class PoolingRunner(WorkerRPCMixin):
    """Loads a pooling model and its tokenizer; `run` turns token ids into pooled outputs.
    It is also a pooling LLM's one worker for collective_rpc (get_model, apply_model, ...)."""

    def __init__(self, config: EngineConfig, pooler_config: Optional[PoolerConfig] = None):
        self.config = config
        self.model_config = mc = config.model_config
        self.scheduler_config = config.scheduler_config
        self.device = config.device_config.device
        self.tokenizer = None if mc.skip_tokenizer_init else load_tokenizer(mc)
        self.model = self._load_model()
        classifier = hasattr(self.model, "compute_head")
        self.supported_tasks: tuple[str, ...] = ("classify",) if classifier else ("embed",)
        folder = load_pooler_config(mc.model_path) if not classifier else PoolerConfig()
        # LLM(pooler_config=...) overrides the folder's choices field by field, as in vLLM
        self.pooler_config = folder.overridden_by(pooler_config)
        if self.pooler_config.seq_pooling_type is None:
            self.pooler_config.seq_pooling_type = getattr(self.model, "default_pooling_type",
                                                          "CLS")
        self.pooling_task = self.pooler_config.task or self.supported_tasks[0]
        if self.pooling_task not in self.supported_tasks:
            raise ValueError(f"PoolerConfig(task={self.pooling_task!r}) is not supported by "
                             f"{mc.architecture}; supported tasks: {list(self.supported_tasks)}.")
        self.activation = classifier_activation(mc.hf_config) if classifier else None
        self.max_model_len = mc.max_model_len
        if self.pooler_config.max_seq_length:
            self.max_model_len = min(self.max_model_len, self.pooler_config.max_seq_length)
        self.stats = {"num_prompt_tokens": 0, "num_forward_passes": 0}
        set_random_seed(mc.seed)      # as vLLM's workers: the global generators start at seed

    def _load_model(self) -> torch.nn.Module:
        from runner.engine.model_loader import get_model
        return get_model(self.model_config, self.device)     # the registry's pooling class

    def get_tokenizer(self):
        return self.tokenizer

    def get_model(self) -> torch.nn.Module:
        return self.model

    def model_info(self) -> PoolingModelInfo:
        hf = self.model_config.hf_config
        return PoolingModelInfo(
            name=self.model_config.model, embedding_size=hf.hidden_size,
            is_matryoshka=bool(getattr(hf, "matryoshka_dimensions", None))
            or bool(getattr(hf, "is_matryoshka", False)),
            matryoshka_dimensions=getattr(hf, "matryoshka_dimensions", None),
            default_use_activation=self.pooler_config.use_activation,
            default_dimensions=self.pooler_config.dimensions)

    # ------------------------------------------------------------------ inputs
    def _check_len(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ValueError("a prompt has no tokens; pooling needs at least one.")
        if len(ids) > self.max_model_len:
            raise ValueError(f"a prompt has {len(ids)} tokens, more than this pooling model's "
                             f"maximum length {self.max_model_len}; shorten it.")
        return ids

    def tokenize(self, prompt, tokenization_kwargs: Optional[dict] = None) -> list[int]:
        if tokenization_kwargs and isinstance(prompt, (str, dict)) and (
                isinstance(prompt, str) or "prompt_token_ids" not in prompt):
            text = prompt if isinstance(prompt, str) else prompt["prompt"]
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer (skip_tokenizer_init=True).")
            return self._check_len(list(self.tokenizer(text, **tokenization_kwargs).input_ids))
        _, ids = parse_prompt(prompt, self.tokenizer, self.model_config.hf_config.vocab_size)
        return self._check_len(list(ids))

    def tokenize_pair(self, text_1: str, text_2: str,
                      tokenization_kwargs: Optional[dict] = None):
        """A cross-encoder's input: the tokenizer's text pair -> (ids, token_type_ids)."""
        if self.tokenizer is None:
            raise ValueError("score() on a cross-encoder needs a tokenizer "
                             "(skip_tokenizer_init=True was given).")
        if not isinstance(text_1, str) or not isinstance(text_2, str):
            raise ValueError("score() inputs must be strings for a cross-encoder.")
        enc = self.tokenizer(text=text_1, text_pair=text_2, **(tokenization_kwargs or {}))
        tt = enc.get("token_type_ids")
        return self._check_len(list(enc["input_ids"])), (list(tt) if tt is not None else None)

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
    def pooled(self, batch_ids: list[list[int]],
               batch_tt: Optional[list[Optional[list[int]]]] = None) -> torch.Tensor:
        """Token id lists (and token type ids) -> pooled hidden states [B, hidden]."""
        B, T = len(batch_ids), max(len(x) for x in batch_ids)
        input_ids = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        tt = torch.zeros(B, T, dtype=torch.long)
        for b, ids in enumerate(batch_ids):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            mask[b, :len(ids)] = 1
            if batch_tt is not None and batch_tt[b] is not None:
                tt[b, :len(ids)] = torch.tensor(batch_tt[b])
        input_ids, mask, tt = (x.to(self.device) for x in (input_ids, mask, tt))
        hidden = self.model.hidden_states(input_ids, mask, tt)                 # [B, T, h]
        self.stats["num_forward_passes"] += 1
        return pool(hidden.float(), mask, self.pooler_config.seq_pooling_type)  # [B, h]

    @torch.inference_mode()
    def _finish(self, pooled: torch.Tensor, p: PoolingParams) -> torch.Tensor:
        """One prompt's pooled state [h] -> its PoolingOutput data, by task."""
        if p.task == "embed":
            if p.dimensions is not None:        # matryoshka cut, before normalizing
                pooled = pooled[:p.dimensions]
            return F.normalize(pooled, p=2, dim=-1) if p.use_activation else pooled
        logits = self.model.compute_head(pooled[None].to(self.model_config.dtype))[0].float()
        if self.pooler_config.logit_mean is not None:
            logits = logits - self.pooler_config.logit_mean
        if self.pooler_config.logit_sigma is not None:
            logits = logits / self.pooler_config.logit_sigma
        return self.activation(logits) if p.use_activation else logits

    def run(self, token_ids: list[list[int]], params: list[PoolingParams],
            request_ids: list[str], token_type_ids: Optional[list] = None,
            use_tqdm=False) -> list[PoolingRequestOutput]:
        """Pool every prompt (params already verified for a task); outputs in prompt order."""
        info = self.model_info()
        for p in params:
            if p.task not in self.supported_tasks:
                raise ValueError(f"pooling task {p.task!r} is not supported by "
                                 f"{self.model_config.architecture}; supported tasks: "
                                 f"{list(self.supported_tasks)}.")
            p.verify(info)
        results: list[Optional[PoolingRequestOutput]] = [None] * len(token_ids)
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm
            make = use_tqdm if callable(use_tqdm) else tqdm
            bar = make(total=len(token_ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            for batch in self._batches([len(x) for x in token_ids]):
                tts = None if token_type_ids is None else [token_type_ids[i] for i in batch]
                pooled = self.pooled([token_ids[i] for i in batch], tts)          # [B, h]
                for row, i in zip(pooled, batch):
                    data = self._finish(row, params[i]).cpu()
                    results[i] = PoolingRequestOutput(request_ids[i], PoolingOutput(data),
                                                      token_ids[i], 0, True)
                self.stats["num_prompt_tokens"] += sum(len(token_ids[i]) for i in batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return results

    def get_stats(self) -> dict:
        return {**self.stats, "device": str(self.device),
                "dtype": str(self.model_config.dtype).replace("torch.", "")}
