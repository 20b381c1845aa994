r"""Incremental detokenization and stop-string search for sequences that grow one step at a time.

Each running sequence owns an `IncrementalDetokenizer`. After every engine step the new token ids
are appended; the detokenizer decodes only a small window of ids around them and returns the text
they added, which the output processor appends to `CompletionOutput.text` and searches for stop
strings with `find_stop_string` (tail only).

Why a window: decoding a token alone is wrong for most tokenizers. Byte-level BPE tokens may hold
part of a UTF-8 character, and SentencePiece (Metaspace) decoders drop the leading space of the
first token they see. So the detokenizer keeps two offsets into the id list:

    ids: ... [prefix_offset ......... read_offset ......... end]
              \____ already emitted ____/ \___ not emitted __/

and emits decode(ids[prefix_offset:]) minus decode(ids[prefix_offset:read_offset]); the shared
first token makes both decodes treat the leading space the same way. Text that ends in U+FFFD
(an incomplete UTF-8 character) is held back until the next token completes it; `flush()` emits
whatever is still held when the sequence ends. The window starts inside the prompt (its last few
tokens), so the first generated token is decoded in context, like vLLM: for SentencePiece
tokenizers the output text keeps the space that separates it from the prompt.

Every decode call sees only the ids since the last emission plus one emitted token, so the cost
per step is O(new tokens), not O(sequence length).
"""
from __future__ import annotations

from typing import Any

# Prompt tokens used as decoding context for the first generated token. A handful is enough
# for a multi-token UTF-8 character and for the leading-space rule; vLLM uses the same count.
_PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Decodes one sequence's generated ids a few at a time; see the module docstring."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int],
                 skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        context = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        # ids holds the prompt context followed by every generated id; offsets index into it.
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._num_context = len(context)
        self._output_text = ""

    @property
    def output_text(self) -> str:
        """All text emitted so far (held-back bytes excluded until `flush`)."""
        return self._output_text

    @property
    def output_token_ids(self) -> list[int]:
        return self._ids[self._num_context:]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            # Cleanup rewrites spaces around punctuation, which depends on text outside the
            # window; the raw decode is what makes window differences add up.
            clean_up_tokenization_spaces=False)

    def append(self, new_token_ids: list[int]) -> str:
        """Add generated ids; return the text they complete (possibly '' while bytes are held)."""
        if not new_token_ids:
            return ""
        self._ids.extend(new_token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Emit the held-back tail, U+FFFD included; call once when the sequence finishes."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text):
            # Only skipped special tokens (or nothing printable) so far: keep the window open.
            return ""
        if new_text.endswith("\ufffd") and not final:
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._output_text += delta
        return delta

    def truncate(self, length: int) -> None:
        """Cut output_text to `length` characters (after a stop string matched)."""
        self._output_text = self._output_text[:length]


def find_stop_string(output_text: str, num_new_chars: int, stop: list[str],
                     include_stop_str_in_output: bool) -> tuple[str, int] | None:
    """Find the earliest stop string that overlaps the `num_new_chars` last characters.

    Returns (the stop string, the length to truncate output_text to) or None. Only the tail is
    searched: a match that lies entirely in older text would have been found on an earlier step.
    When two stop strings start at the same place the longer one wins, so "\\n\\n" beats "\\n".
    """
    if num_new_chars <= 0 or not stop:
        return None
    text_len = len(output_text)
    best: tuple[int, int, str] | None = None  # (start, -len, stop string)
    for stop_str in stop:
        # The match must end inside the new chars, so it starts at most len-1 chars before them.
        search_from = max(0, text_len - num_new_chars - len(stop_str) + 1)
        start = output_text.find(stop_str, search_from)
        if start == -1:
            continue
        key = (start, -len(stop_str), stop_str)
        if best is None or key < best:
            best = key
    if best is None:
        return None
    start, neg_len, stop_str = best
    return stop_str, (start - neg_len if include_stop_str_in_output else start)
