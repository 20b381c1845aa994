"""Request bodies within the server's limits, before any parsing work: size, nesting, JSON.

    ASGI receive() chunks -> read_body: Content-Length checked first, then the bytes counted
        as they arrive; past serve.max_body_bytes -> 413, the rest is never read
    -> json_depth (numpy over the raw bytes: brackets outside strings, their running depth)
        deeper than serve.max_json_depth -> 400, before the JSON decoder recurses into it
    -> parse_json: strict JSON (NaN / Infinity literals refused), an object at the top,
       no lone UTF-16 surrogates in any string (they cannot become UTF-8 for the tokenizer)

Everything here raises APIError, so each refusal is OpenAI's error body with its status. The
depth scan is linear in the body with no Python loop over its bytes (16 MB of brackets: ~1 s
on a CPU core); runner/serve/state.py parses large bodies in a worker thread, off the event
loop.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, AsyncIterator, Callable

import numpy as np

from runner.serve.errors import APIError

_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
# A \\uD800-\\uDFFF escape somewhere in the body: only then are the strings walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_body(receive: Callable, headers: dict, max_bytes: int) -> bytes:
    """The request body from ASGI `receive`, refusing (413) more than max_bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "the Content-Length header is not a number.") from None
        if size > max_bytes:
            raise _too_large(size, max_bytes)
    chunks: list[bytes] = []
    total = 0
    async for chunk in _chunks(receive):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(total, max_bytes, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


async def _chunks(receive: Callable) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(499, "the client disconnected while sending the body.")
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


def _too_large(size: int, limit: int, at_least: bool = False) -> APIError:
    what = f"at least {size}" if at_least else str(size)
    return APIError(413, f"the request body has {what} bytes, more than the server's limit of "
                         f"{limit} (serve.max_body_bytes).")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (brackets inside strings do not
    count). Malformed text gets some number; the decoder refuses it afterwards anyway. Memory:
    a few byte masks of the body and index arrays of its quotes, backslashes and brackets."""
    if not raw:
        return 0
    b = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(b == _QUOTE)
    slashes = np.flatnonzero(b == _BACKSLASH)
    if quotes.size and slashes.size:
        # A quote is escaped when an odd run of backslashes ends right before it.
        starts = np.ones(slashes.size, dtype=bool)
        starts[1:] = slashes[1:] != slashes[:-1] + 1
        run_start = slashes[starts]
        run_end = np.append(slashes[np.flatnonzero(starts)[1:] - 1], slashes[-1])
        odd_ends = run_end[(run_end - run_start + 1) % 2 == 1]
        quotes = quotes[~np.isin(quotes - 1, odd_ends)]
    at = np.flatnonzero((b == _OPEN[0]) | (b == _OPEN[1]) | (b == _CLOSE[0]) | (b == _CLOSE[1]))
    if at.size == 0:
        return 0
    # inside a string when an odd number of (unescaped) quotes stands before the bracket
    at = at[np.searchsorted(quotes, at) % 2 == 0]
    if at.size == 0:
        return 0
    kind = b[at]
    steps = np.where((kind == _OPEN[0]) | (kind == _OPEN[1]), np.int32(1), np.int32(-1))
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _no_constants(name: str) -> Any:
    raise APIError(400, f"malformed JSON body: {name} is not a JSON number (JSON has no NaN or "
                        "Infinity).")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON, but no float holds it
        raise APIError(400, f"the number {text[:40]} is too large for a float.")
    return value


def parse_json(raw: bytes, max_depth: int) -> dict:
    """The body as a dict, or APIError(400) naming what is wrong with it."""
    # fewer opening brackets than the limit: no need to scan for the depth
    depth = 0 if raw.count(b"[") + raw.count(b"{") <= max_depth else json_depth(raw)
    if depth > max_depth:
        raise APIError(400, f"the JSON body nests {depth} levels deep, more than the server's "
                            f"limit of {max_depth} (serve.max_json_depth).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not UTF-8: {exc}") from None
    try:
        body = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
    except ValueError as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:  # only if max_json_depth is set above the interpreter's limit
        raise APIError(400, "the JSON body nests too deeply.") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(raw):
        where = lone_surrogate(body)
        if where is not None:
            raise APIError(400, f"{where} holds a lone UTF-16 surrogate (an unpaired \\uD800-"
                                "\\uDFFF escape), which is not text.",
                           re.split(r"[.\[]", where, maxsplit=1)[0])
    return body


def lone_surrogate(value: Any) -> str | None:
    """The path (`prompt[2]`, `messages[0].content`) of the first string holding a lone
    surrogate, or None. Iterative (depth is bounded already); numbers cost one type check."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, item in items:
            key = (f"{where}.{k}" if where else str(k)) if isinstance(v, dict) else f"{where}[{k}]"
            if isinstance(k, str) and not _is_utf8(k):
                return where or "body"
            if isinstance(item, str):
                if not _is_utf8(item):
                    return key
            elif isinstance(item, (dict, list)):
                stack.append((key, item))
    return None


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
