"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` (vLLM's types).

Every refusal of the server is an APIError raised where the problem is found: a request field
(400, `param` names it), the body (400 / 413), auth (401), the model (404), the server's state
(503), or a failure inside the engine (500, with the request id in the message). The app's
exception handlers turn them into JSON responses; streams send the same body as an SSE event.
"""
from __future__ import annotations

import re
from typing import Optional

_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
          413: "RequestTooLargeError", 499: "ClientClosedRequest", 500: "InternalServerError",
          503: "ServiceUnavailableError"}

# SamplingParams' and the engine's ValueErrors name the field first ("top_p must be ...").
_FIELD_RE = re.compile(r"^([a-z_]+)\b")


class APIError(Exception):
    """A refusal with an HTTP status, a message for the client and the field it is about."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type_: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _TYPES.get(status, "BadRequestError" if status < 500
                                        else "InternalServerError")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


def bad_request(exc: Exception, known_fields: frozenset | set = frozenset()) -> APIError:
    """A ValueError from SamplingParams / the engine as a 400 whose param is the field its
    message starts with (when that is a request field)."""
    msg = str(exc)
    m = _FIELD_RE.match(msg)
    param = m.group(1) if m and m.group(1) in known_fields else None
    if param is None and "max_model_len" in msg:
        param = "prompt"
    return APIError(400, msg, param)
