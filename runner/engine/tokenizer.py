"""Tokenizer loading for the engine: HF AutoTokenizer from the model folder or an explicit one."""
from __future__ import annotations

from runner.engine.config import ModelConfig


def load_tokenizer(model_config: ModelConfig):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            model_config.tokenizer, revision=model_config.tokenizer_revision,
            trust_remote_code=model_config.trust_remote_code,
            use_fast=model_config.tokenizer_mode != "slow")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer {model_config.tokenizer!r}: {exc}") from None
