"""Prompts -> token ids, off the event loop and off the engine thread, within the limits.

    text prompt -> more characters than max_prompt_tokens * the longest token string of the
                   vocabulary (vLLM's max_chars_per_token bound)? 400 before any tokenizing
                -> one tokenizer thread (HF tokenizers are not safe to call from several
                   threads at once) -> token ids
    token ids / the ids above -> truncate_prompt_tokens (keep the last N, vLLM's default
                   side) -> longer than max_prompt_tokens? 400 naming the field
    -> {"prompt": text, "prompt_token_ids": ids}: the engine's add_request takes the ids as
       they are, so the engine thread never tokenizes (a 50 MB prompt stalled every request
       while it did)

/tokenize and /detokenize use the same thread (encode / decode), /tokenize's text bounded by
serve.max_tokenize_chars (16 MB of text is some 20 s of tokenizing on a CPU core, which every
prompt behind it would wait for). The engine thread keeps the tokenizer for detokenizing
outputs; decoding does not change the tokenizer's settings.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from runner.serve.errors import APIError


def max_chars_per_token(tokenizer: Any) -> int:
    """The longest token string of the vocabulary: no token covers more characters."""
    if tokenizer is None:
        return 0
    try:
        return max((len(t) for t in tokenizer.get_vocab()), default=0)
    except (AttributeError, NotImplementedError, TypeError):
        return 0


class PromptProcessor:
    def __init__(self, tokenizer: Any, max_model_len: int, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_prompt_tokens = max_prompt_tokens
        self.max_chars_per_token = max_chars_per_token(tokenizer)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="serve-tokenizer")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _need_tokenizer(self, name: str) -> Any:
        if self.tokenizer is None:
            raise APIError(400, "this server has no tokenizer (skip_tokenizer_init): send "
                                "token ids.", name)
        return self.tokenizer

    def check_chars(self, text: str, name: str, where: str = "",
                    limit_tokens: Optional[int] = None) -> None:
        limit_tokens = limit_tokens or self.max_prompt_tokens
        bound = limit_tokens * self.max_chars_per_token
        if self.max_chars_per_token and len(text) > bound:
            raise APIError(400, f"{name}{where} has {len(text)} characters, more than {bound} "
                                f"(an upper bound for the {limit_tokens} tokens a prompt may "
                                "have); shorten it.", name)

    async def encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        tok = self._need_tokenizer("prompt")

        def work():
            return [list(ids) for ids in
                    tok(texts, add_special_tokens=add_special_tokens).input_ids]
        return await self.run(work)

    async def decode(self, ids: list[int]) -> str:
        tok = self._need_tokenizer("tokens")
        return await self.run(lambda: tok.decode(ids))

    async def prepare(self, prompts: list, add_special_tokens: bool,
                      truncate: Optional[int], name: str = "prompt",
                      limit: Optional[int] = None) -> list[dict]:
        """Engine prompts ({"prompt", "prompt_token_ids"}) for text / token-id prompts, each at
        most `limit` tokens (default max_prompt_tokens: room for one generated token)."""
        limit = limit or self.max_prompt_tokens
        texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
        if truncate is None:
            for i, text in texts:
                self.check_chars(text, name, f"[{i}]" if len(prompts) > 1 else "", limit)
        encoded = await self.encode([t for _, t in texts], add_special_tokens) if texts else []
        ids_of = dict(zip((i for i, _ in texts), encoded))
        keep = limit if truncate == -1 else truncate
        out = []
        for i, p in enumerate(prompts):
            text = p if isinstance(p, str) else None
            ids = ids_of[i] if text is not None else list(p)
            if keep is not None and len(ids) > keep:
                ids = ids[-keep:]
                text = None  # the echo then shows the kept tokens, decoded
            if not ids:
                raise APIError(400, f"{name} is empty (0 tokens); give at least one token.",
                               name)
            if len(ids) > limit:
                raise APIError(400, f"{name} has {len(ids)} tokens, more than the server's "
                                    f"limit of {limit} (max_model_len={self.max_model_len}); "
                                    "shorten it or set truncate_prompt_tokens.", name)
            out.append({"prompt": text, "prompt_token_ids": ids} if text is not None
                       else {"prompt_token_ids": ids})
        return out
