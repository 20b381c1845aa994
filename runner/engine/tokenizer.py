"""Tokenizer loading and prompt parsing: HF AutoTokenizer from the model folder or an explicit
one; a prompt (str, {"prompt": ...}, {"prompt_token_ids": [...]} or a list of token ids: the
forms of runner/engine/inputs.py) -> (text, token ids)."""
from __future__ import annotations

from typing import Optional, Union

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


def parse_prompt(prompt: Union[str, dict], tokenizer, vocab_size: int
                 ) -> tuple[Optional[str], list[int]]:
    """vLLM's prompt forms -> (text or None, token ids), ids checked against the vocabulary.
    Emptiness and length limits are the caller's to check (they differ by entry point)."""
    if isinstance(prompt, str):
        text, ids = prompt, None
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                          for t in prompt):
        text, ids = None, prompt        # vLLM's list[int] prompt: token ids
    elif isinstance(prompt, dict):
        unknown = set(prompt) - {"prompt", "prompt_token_ids", "multi_modal_data"}
        if unknown or ("prompt" not in prompt and "prompt_token_ids" not in prompt):
            raise ValueError("a prompt dict needs 'prompt' (text) or 'prompt_token_ids'; "
                             f"got keys {sorted(prompt)}.")
        if prompt.get("multi_modal_data"):
            raise NotImplementedError("multi_modal_data is not supported.")
        text, ids = prompt.get("prompt"), prompt.get("prompt_token_ids")
    else:
        raise ValueError(f"a prompt must be a str, a dict or a list of token ids, got "
                         f"{type(prompt).__name__}.")
    if ids is None:
        if tokenizer is None:
            raise ValueError("skip_tokenizer_init=True: give prompts as "
                             "{'prompt_token_ids': [...]}.")
        ids = tokenizer(text).input_ids
    ids = list(map(int, ids))
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = [t for t in ids if not 0 <= t < vocab_size]
        raise ValueError(f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
    return text, ids
