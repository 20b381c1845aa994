"""RequestOutputs -> OpenAI's response JSON, in vLLM's format (non-streamed and streamed).

    RequestOutput(prompt, prompt_token_ids, prompt_logprobs, outputs[CompletionOutput])
      -> completion_response: one choice per (prompt, completion); with echo the prompt's text
         comes first and, with logprobs, its tokens / token_logprobs (null for the first
         token) / top_logprobs / text_offset come before the completion's; `max_tokens: 0`
         leaves the completion out; `prompt_logprobs` (vLLM's extra) as vLLM writes it:
         [null, {"<token id>": {"logprob", "rank", "decoded_token"}}, ...]
      -> CompletionStreamer: the same, chunk by chunk (the echo in each choice's first chunk)
      -> chat_response / chat logprobs; embedding_response (floats or base64)

A log-probability of -inf is written as -9999.0, as vLLM does (JSON has no infinity).
"""
from __future__ import annotations

import base64
import json
import math
import struct
import time
from typing import Any, Optional

from runner.serve.protocol import GenerationRequest

LOGPROB_FLOOR = -9999.0
SSE_DONE = b"data: [DONE]\n\n"


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _lp(x: float) -> float:
    x = float(x)
    return LOGPROB_FLOOR if math.isnan(x) or x < LOGPROB_FLOOR else x


def _decode(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"


def _token(entry: Optional[dict], token_id: int, tokenizer: Any, as_ids: bool) -> str:
    if as_ids:
        return f"token_id:{token_id}"
    lp = entry.get(token_id) if entry else None
    if lp is not None and getattr(lp, "decoded_token", None) is not None:
        return lp.decoded_token
    return _decode(tokenizer, token_id)


def completion_logprobs(token_ids: list, entries: list, num_top: int, tokenizer: Any,
                        initial_offset: int = 0, as_ids: bool = False) -> dict:
    """OpenAI's completions logprobs over parallel lists of token ids and logprob dicts (None
    for a token that has none: the prompt's first). top_logprobs holds the first num_top + 1
    entries of each dict (the token itself, then the best alternatives), as vLLM does."""
    tokens, token_lps, tops, offsets = [], [], [], []
    pos = initial_offset
    for tid, entry in zip(token_ids, entries):
        text = _token(entry, tid, tokenizer, as_ids)
        tokens.append(text)
        if entry is None:
            token_lps.append(None)
            tops.append(None)
        else:
            token_lps.append(_lp(entry[tid].logprob))
            tops.append({_token(entry, t, tokenizer, as_ids): _lp(lp.logprob)
                         for i, (t, lp) in enumerate(entry.items()) if i <= num_top})
        offsets.append(pos)
        pos += len(text)
    return {"text_offset": offsets, "token_logprobs": token_lps, "tokens": tokens,
            "top_logprobs": tops}


def prompt_logprobs_json(entries: Optional[list]) -> Optional[list]:
    if entries is None:
        return None
    return [None if e is None else
            {str(t): {"logprob": _lp(lp.logprob), "rank": lp.rank,
                      "decoded_token": lp.decoded_token} for t, lp in e.items()}
            for e in entries]


def prompt_text(req: GenerationRequest, out: Any, tokenizer: Any) -> str:
    """The echoed prompt: the text the client sent, or its token ids decoded (vLLM); empty
    with return_token_ids (the ids say it)."""
    if req.return_token_ids:
        return ""
    if out.prompt is not None:
        return out.prompt
    return tokenizer.decode(list(out.prompt_token_ids)) if tokenizer is not None else ""


def _echo_parts(req: GenerationRequest, out: Any, c: Any, tokenizer: Any, t0: int, t1: int,
                first: bool) -> tuple[str, list, list]:
    """(echoed prompt text, token ids, logprob entries) of completion c's tokens [t0, t1),
    the prompt's first when echo asks for it (first chunk / whole answer)."""
    ids: list = [] if req.echo_only else list(c.token_ids[t0:t1])
    lps = [] if req.echo_only or c.logprobs is None else list(c.logprobs[t0:t1])
    if req.echo and first:
        p_ids = list(out.prompt_token_ids or [])
        p_lps = list(out.prompt_logprobs or [None] * len(p_ids))
        return prompt_text(req, out, tokenizer), p_ids + ids, p_lps + lps
    return "", ids, lps


def usage(outputs: list, echo_only: bool = False) -> dict:
    prompt = sum(len(o.prompt_token_ids or []) for o in outputs if o is not None)
    completion = 0 if echo_only else sum(len(c.token_ids) for o in outputs if o is not None
                                         for c in o.outputs)
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion}


def _finish(req: GenerationRequest, c: Any) -> tuple[Optional[str], Any]:
    if req.echo_only:
        return "length", None
    return c.finish_reason, c.stop_reason


def completion_response(req: GenerationRequest, outputs: list, tokenizer: Any, request_id: str,
                        model: str) -> dict:
    choices = []
    for out in outputs:
        for c in out.outputs:
            head, ids, lps = _echo_parts(req, out, c, tokenizer, 0, len(c.token_ids), True)
            text = head + ("" if req.echo_only else c.text)
            finish, stop = _finish(req, c)
            choice = {"index": len(choices), "text": text, "logprobs": None,
                      "finish_reason": finish, "stop_reason": stop,
                      "prompt_logprobs": prompt_logprobs_json(out.prompt_logprobs)}
            if req.want_logprobs:
                choice["logprobs"] = completion_logprobs(ids, lps, req.params.logprobs,
                                                         tokenizer, 0, req.tokens_as_ids)
            if req.return_token_ids:
                choice["token_ids"] = [] if req.echo_only else list(c.token_ids)
                choice["prompt_token_ids"] = list(out.prompt_token_ids or [])
            choices.append(choice)
    return {"id": request_id, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(outputs, req.echo_only)}


class CompletionStreamer:
    """The chunks of a streamed completion: feed it (prompt index, RequestOutput) pairs."""

    def __init__(self, req: GenerationRequest, tokenizer: Any, request_id: str, model: str,
                 num_prompts: int):
        self.req, self.tokenizer, self.model = req, tokenizer, model
        self.head = {"id": request_id, "object": "text_completion",
                     "created": int(time.time()), "model": model}
        self.trackers = [DeltaTracker() for _ in range(num_prompts)]
        self.finals: list = [None] * num_prompts

    def feed(self, i: int, out: Any) -> list[bytes]:
        req, tr, chunks = self.req, self.trackers[i], []
        n = req.params.n
        for c in out.outputs:
            if c.index in tr.finished:
                continue
            finished = out.finished
            first = c.index not in tr.started
            if req.echo and first and not (finished or c.token_ids):
                continue  # prefill still running: prompt logprobs are not complete yet
            if req.echo_only and not finished:
                continue
            d = tr.delta(c, finished)
            if d is None and not (req.echo and first):
                continue
            text, t0, t1 = d if d is not None else ("", 0, 0)
            head, ids, lps = _echo_parts(req, out, c, self.tokenizer, t0, t1, first)
            if req.echo_only:
                text = ""
            finish, stop = _finish(req, c) if finished else (None, None)
            choice = {"index": i * n + c.index, "text": head + text, "logprobs": None,
                      "finish_reason": finish, "stop_reason": stop}
            tr.started.add(c.index)
            if req.want_logprobs and (lps or ids):
                # offsets count the decoded tokens, as the whole answer's do, so the chunks'
                # logprobs put together equal it (a character split over two byte tokens
                # counts twice there)
                offset = tr.token_chars.get(c.index, 0)
                lp = completion_logprobs(ids, lps, req.params.logprobs, self.tokenizer, offset,
                                         req.tokens_as_ids)
                tr.token_chars[c.index] = offset + sum(map(len, lp["tokens"]))
                choice["logprobs"] = lp
            if req.return_token_ids:
                choice["token_ids"] = [] if req.echo_only else list(c.token_ids[t0:t1])
                if first:
                    choice["prompt_token_ids"] = list(out.prompt_token_ids or [])
            chunk = {**self.head, "choices": [choice]}
            if req.continuous_usage:
                p = len(out.prompt_token_ids or [])
                done = 0 if req.echo_only else t1
                chunk["usage"] = {"prompt_tokens": p, "total_tokens": p + done,
                                  "completion_tokens": done}
            chunks.append(sse(chunk))
        if out.finished:
            self.finals[i] = out
        return chunks

    def usage_chunk(self) -> bytes:
        return sse({**self.head, "choices": [], "usage": usage(self.finals, self.req.echo_only)})


def chat_logprobs(token_ids: list, entries: list, tokenizer: Any, top: int) -> dict:
    content = []
    for tid, entry in zip(token_ids, entries):
        text = _token(entry, tid, tokenizer, False)
        alts = sorted(((t, lp) for t, lp in entry.items() if lp.rank is not None),
                      key=lambda x: x[1].rank)[:top]
        content.append({
            "token": text, "logprob": _lp(entry[tid].logprob), "bytes": list(text.encode()),
            "top_logprobs": [{"token": _token(entry, t, tokenizer, False),
                              "logprob": _lp(lp.logprob),
                              "bytes": list(_token(entry, t, tokenizer, False).encode())}
                             for t, lp in alts]})
    return {"content": content}


def chat_response(req: GenerationRequest, out: Any, tokenizer: Any, request_id: str,
                  model: str) -> dict:
    choices = []
    for c in out.outputs:
        choice = {"index": c.index, "message": {"role": "assistant", "content": c.text},
                  "logprobs": None, "finish_reason": c.finish_reason,
                  "stop_reason": c.stop_reason}
        if req.top_logprobs is not None and c.logprobs is not None:
            choice["logprobs"] = chat_logprobs(list(c.token_ids), c.logprobs, tokenizer,
                                               req.top_logprobs)
        if req.return_token_ids:
            choice["token_ids"] = list(c.token_ids)
        choices.append(choice)
    body = {"id": request_id, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage([out]),
            "prompt_logprobs": prompt_logprobs_json(out.prompt_logprobs)}
    if req.return_token_ids:
        body["prompt_token_ids"] = list(out.prompt_token_ids or [])
    return body


class DeltaTracker:
    """What of each choice's text / tokens the client has already been sent."""

    def __init__(self) -> None:
        self.text_len: dict[int, int] = {}
        self.num_tokens: dict[int, int] = {}
        self.token_chars: dict[int, int] = {}  # characters of the decoded tokens sent
        self.started: set[int] = set()
        self.finished: set[int] = set()

    def delta(self, c: Any, finished: bool) -> Optional[tuple[str, int, int]]:
        """(new text, first new token index, end token index) of CompletionOutput c, or None
        when there is nothing to send yet (tokens whose text the detokenizer holds back)."""
        start = self.text_len.get(c.index, 0)
        text = c.text[start:] if len(c.text) >= start else ""
        if not text and not finished:
            return None
        self.text_len[c.index] = max(start, len(c.text))
        t0 = self.num_tokens.get(c.index, 0)
        n = len(c.logprobs) if c.logprobs is not None else len(c.token_ids)
        self.num_tokens[c.index] = max(t0, n)
        if finished:
            self.finished.add(c.index)
        return text, t0, max(t0, n)


def embedding_response(model: str, outputs: list, fmt: str) -> dict:
    data = []
    tokens = 0
    for i, out in enumerate(outputs):
        vec = [float(x) for x in out.outputs.embedding]
        tokens += len(getattr(out, "prompt_token_ids", None) or [])
        emb: Any = vec
        if fmt == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
