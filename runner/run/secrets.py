"""Secrets never reach a run folder: which config keys are secret, and their redaction.

A key is secret when one of its words (split at `_`, `-`, `.` and camelCase) is or ends in
key, token, secret, password or passwd: api_key, hf_token, clientSecret, db_password, apikey.
"max_tokens", "stop_token_ids" or "tokenizer" are not (their words are tokens / token+ids with a
list value / tokenizer): only a secret key with a non-empty string value is redacted.

    redact(obj)            dicts and lists, every secret value -> "<redacted>"  (config.yaml,
                           manifest.json, benchmark.json, the config hash)
    redact_override(text)  "engine.api_key=sk-..." -> "engine.api_key=<redacted>"  (command
                           lines and overrides in the manifest)
    recipe_refs(obj)       every secret value -> an environment reference that a rerun resolves
                           (`${oc.env:OPENAI_API_KEY,null}` for engine.api_key)
    secret_values(obj)     the secret strings themselves, for masking run.log lines
    scrub(obj, values)     redact(obj), and every known secret value inside any string masked
                           too (Hydra's "a=1,engine.api_key=sk-...,b=2" job names)
    redact_url(url)        "http://user:pw@host" -> "http://user:<redacted>@host"
"""
from __future__ import annotations

import re
from typing import Any, Iterator

REDACTED = "<redacted>"
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd")
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# The environment variable a rerun reads each known secret from; other secrets get one named
# after their key path (engine.foo_token -> ENGINE_FOO_TOKEN).
ENV_REFS = {"engine.api_key": "OPENAI_API_KEY"}
_URL_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def is_secret_key(name: str) -> bool:
    for part in re.split(r"[_\-.\s]+", str(name)):
        for word in _WORD.findall(part) or [part]:
            w = word.lower()
            if w.endswith(_SECRET_WORDS):
                return True
    return False


def _is_secret(key: Any, value: Any) -> bool:
    return isinstance(value, str) and value != "" and is_secret_key(str(key))


def redact_url(text: str) -> str:
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)


def redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (REDACTED if _is_secret(k, v) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_override(redact_url(obj))
    return obj


def mask_values(obj: Any, values: list[str]) -> Any:
    """`obj` with every occurrence of each secret value in its strings replaced."""
    values = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)
    if isinstance(obj, str):
        for v in values:
            obj = obj.replace(v, REDACTED)
        return redact_url(obj)
    if isinstance(obj, dict):
        return {k: mask_values(v, values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_values(v, values) for v in obj]
    return obj


def scrub(obj: Any, values: list[str]) -> Any:
    return mask_values(redact(obj), values)


def redact_override(text: str) -> str:
    """A `key=value` command-line item with a secret key gets its value redacted."""
    key, sep, value = text.partition("=")
    if sep and value and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]):
        return f"{key}={REDACTED}"
    return text


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if _is_secret(k, v):
                yield p, v
            else:
                yield from _walk(v, p)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def secret_values(obj: Any) -> list[str]:
    return [v for _, v in _walk(obj)]


def has_secret(obj: Any) -> bool:
    return any(True for _ in _walk(obj))


def env_name(path: str) -> str:
    return ENV_REFS.get(path) or re.sub(r"[^A-Za-z0-9]+", "_", path).upper()


def recipe_refs(obj: Any, path: str = "") -> Any:
    """`obj` with each secret value replaced by `${oc.env:NAME,null}` (null when unset)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            out[k] = "${oc.env:" + env_name(p) + ",null}" if _is_secret(k, v) else \
                recipe_refs(v, p)
        return out
    if isinstance(obj, list):
        return [recipe_refs(v, path) for v in obj]
    return obj


class SecretMask:
    """A logging filter that replaces known secret strings in every record of run.log."""

    def __init__(self, secrets: list[str]):
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        return redact_url(text)

    def filter(self, record) -> bool:
        if self.secrets:
            record.msg = self.mask(record.getMessage())
            record.args = None
        return True
