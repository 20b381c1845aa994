"""PoolerConfig: how a pooling model pools (vLLM 0.24's `vllm.config.PoolerConfig` fields).

    LLM(..., pooler_config=PoolerConfig(...) or a dict) -> overrides field by field (None: keep)
      the model folder's defaults (runner/engine/pooling.py: sentence-transformers files, else
      the architecture's pooling) -> PoolingRunner

Token-wise pooling, chunked processing and step rewards are not supported and raise when set.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from runner.engine.utils.dataclass_args import dataclass_from_arg

POOLING_TYPES = ("MEAN", "CLS", "LAST", "MAX", "MEAN_SQRT_LEN")


SEQ_POOLING_TYPES = ("CLS", "LAST", "MEAN")        # vLLM 0.24's; MAX, MEAN_SQRT_LEN are ours
TOK_POOLING_TYPES = ("ALL", "STEP")


@dataclass
class PoolerConfig:
    """How pooling models pool (vLLM 0.24's PoolerConfig fields); None fields take the model's
    defaults. Token-wise pooling, chunked processing and step rewards are not supported and
    raise when set."""

    task: Optional[str] = None
    pooling_type: Optional[str] = None
    seq_pooling_type: Optional[str] = None
    tok_pooling_type: Optional[str] = None
    use_activation: Optional[bool] = None
    dimensions: Optional[int] = None
    enable_chunked_processing: bool = False
    max_embed_len: Optional[int] = None
    logit_mean: Optional[float] = None
    logit_sigma: Optional[float] = None
    step_tag_id: Optional[int] = None
    returned_token_ids: Optional[list[int]] = None
    max_seq_length: Optional[int] = None     # ours: sentence_bert_config.json's cap, if any

    def __post_init__(self) -> None:
        if self.logit_sigma is not None and self.logit_sigma == 0:
            raise ValueError("logit_sigma cannot be 0 (division by zero)")
        if self.pooling_type is not None:
            if self.seq_pooling_type is not None or self.tok_pooling_type is not None:
                raise ValueError("Cannot set both `pooling_type` and `seq_pooling_type` / "
                                 "`tok_pooling_type`")
            if self.pooling_type in TOK_POOLING_TYPES:
                self.tok_pooling_type = self.pooling_type
            elif self.pooling_type in POOLING_TYPES:
                self.seq_pooling_type = self.pooling_type
            else:
                raise NotImplementedError(f"pooling_type={self.pooling_type!r}; supported: "
                                          f"{list(POOLING_TYPES)}.")
        if self.seq_pooling_type is not None and self.seq_pooling_type not in POOLING_TYPES:
            raise NotImplementedError(f"seq_pooling_type={self.seq_pooling_type!r}; supported: "
                                      f"{list(POOLING_TYPES)}.")
        unsupported = {"tok_pooling_type": self.tok_pooling_type is not None,
                       "enable_chunked_processing": self.enable_chunked_processing,
                       "max_embed_len": self.max_embed_len is not None,
                       "step_tag_id": self.step_tag_id is not None,
                       "returned_token_ids": self.returned_token_ids is not None}
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise NotImplementedError(f"PoolerConfig {bad} are not supported (no token-wise "
                                      "pooling, chunked processing or step rewards); leave "
                                      "them unset.")

    @classmethod
    def from_arg(cls, value) -> Optional["PoolerConfig"]:
        return dataclass_from_arg(cls, value, "pooler_config")

    def overridden_by(self, user: Optional["PoolerConfig"]) -> "PoolerConfig":
        """This config (the model's defaults) with every field `user` set replacing it."""
        if user is None:
            return self
        merged = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            value = getattr(user, f.name)
            if f.name != "pooling_type" and value is not None and value != f.default:
                setattr(merged, f.name, value)
        return merged
