"""Prompt types at vLLM's path (vllm.inputs): what generate(), chat() and add_request() take.

    from runner.engine.inputs import TextPrompt, TokensPrompt
    llm.generate([TextPrompt(prompt="Hello"), TokensPrompt(prompt_token_ids=[1, 2, 3]), [4, 5]])

A prompt is a str, a TextPrompt {"prompt": str}, a TokensPrompt {"prompt_token_ids": [...],
optionally "prompt": its text} or a plain list[int] of token ids. `prompt_to_seq` turns the
first argument of generate() into a list of prompts as vLLM does: a str, a dict or a non-empty
list of ints is one prompt, anything else a sequence of them. Turning one prompt into token ids
is runner/engine/tokenizer.py's parse_prompt.
"""
from __future__ import annotations

from typing import Any, Sequence, TypedDict, Union

try:
    from typing import NotRequired
except ImportError:         # Python < 3.11
    from typing_extensions import NotRequired


class TextPrompt(TypedDict):
    """A text prompt, tokenized by the engine."""

    prompt: str
    multi_modal_data: NotRequired[Any]      # refused: no multi-modal models here


class TokensPrompt(TypedDict):
    """A tokenized prompt; `prompt` is its text when the caller has it (kept in the output)."""

    prompt_token_ids: list[int]
    prompt: NotRequired[str]
    multi_modal_data: NotRequired[Any]


SingletonPrompt = Union[str, TextPrompt, TokensPrompt, list[int]]
PromptType = SingletonPrompt


def is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def prompt_to_seq(prompts: Union[PromptType, Sequence[PromptType]]) -> list[PromptType]:
    """One prompt or a sequence of prompts -> a list of prompts (module docstring)."""
    if isinstance(prompts, (str, dict)) or is_token_ids(prompts):
        return [prompts]
    return list(prompts)
