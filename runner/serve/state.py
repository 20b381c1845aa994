"""ServerState: what every handler reads, built once when the app is built.

    AsyncLLMEngine + served names + sampling preset + ServeConfig
      -> model facts (vocab size, max_model_len, max_logprobs, SamplingParams' fields)
      -> the request tables of every endpoint (runner/serve/request_fields.py), the OpenAPI
         document's source as well as the validator's
      -> PromptProcessor (the tokenizer thread), the api key's digest

`read_request` is the one way a handler gets its body: size limit, depth limit, strict JSON,
then the endpoint's table (types, bounds, unknown fields). Nothing is tokenized, rendered or
queued before it has passed.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter
from typing import Any, Optional

from starlette.requests import Request

from runner.serve.async_engine import AsyncLLMEngine
from runner.serve.config import ServeConfig
from runner.serve.errors import APIError
from runner.serve.limits import parse_json, read_body
from runner.serve.prompts import PromptProcessor
from runner.serve.request_fields import (NOT_IMPLEMENTED, ModelFacts, request_tables,
                                         sampling_params_fields,
                                         structured_outputs_available)
from runner.serve.schema import validate

_PARSE_INLINE_BYTES = 256 * 1024  # larger bodies are parsed off the event loop
_POOLING_TASKS = {"embed", "embedding", "pooling", "encode", "reward", "classify", "score"}


def is_embedding_model(llm: Any) -> bool:
    """Whether the loaded model pools (embeddings) rather than generates."""
    if hasattr(llm, "pooling_runner"):
        return llm.pooling_runner is not None
    mc = getattr(llm.llm_engine, "model_config", None)
    for attr in ("task", "runner_type", "pooling_type"):
        value = getattr(mc, attr, None)
        if isinstance(value, str) and value != "auto":
            return value in _POOLING_TASKS or attr == "pooling_type"
    for attr in ("is_embedding_model", "embedding_mode", "is_pooling_model"):
        value = getattr(mc, attr, None)
        if isinstance(value, bool):
            return value
    archs = getattr(getattr(mc, "hf_config", None), "architectures", None) or []
    return bool(archs) and not any(a.endswith(("ForCausalLM", "LMHeadModel",
                                               "ForConditionalGeneration")) for a in archs)


def _first(*candidates: Any) -> Any:
    return next((c for c in candidates if isinstance(c, int) and not isinstance(c, bool)), None)


def model_facts(llm: Any, tokenizer: Any, cfg: ServeConfig) -> ModelFacts:
    engine = getattr(llm, "llm_engine", None) or getattr(llm, "pooling_runner", None)
    mc = getattr(engine, "model_config", None)
    sc = getattr(engine, "scheduler_config", None)
    hf = getattr(mc, "hf_config", None)
    vocab = _first(getattr(hf, "vocab_size", None),
                   len(tokenizer) if tokenizer is not None else None) or 1
    max_len = _first(getattr(engine, "max_model_len", None), getattr(sc, "max_model_len", None),
                     getattr(mc, "max_model_len", None),
                     getattr(hf, "max_position_embeddings", None)) or 2048
    return ModelFacts(
        vocab_size=vocab, max_model_len=max_len,
        max_logprobs=_first(getattr(mc, "max_logprobs", None)) or 20,
        sampling_fields=sampling_params_fields(),
        structured_outputs=structured_outputs_available(), max_n=cfg.max_n,
        max_prompts=cfg.max_prompts_per_request,
        max_prompt_tokens=min(cfg.max_prompt_tokens or max_len - 1, max_len - 1),
        max_stop=cfg.max_stop, max_stop_chars=cfg.max_stop_chars,
        max_body_bytes=cfg.max_body_bytes, max_tokenize_chars=cfg.max_tokenize_chars)


def key_digest(key: Optional[str]) -> Optional[bytes]:
    return None if not key else hashlib.sha256(key.encode()).digest()


def key_matches(digest: bytes, authorization: Optional[str]) -> bool:
    """Constant-time: both sides are hashed to 32 bytes, then compared with compare_digest,
    so neither the key's length nor its first wrong byte shows in the time taken."""
    scheme, _, token = (authorization or "").partition(" ")
    given = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(given, digest) & (scheme.lower() == "bearer")


class ServerState:
    def __init__(self, engine: AsyncLLMEngine, served_model_names: list[str],
                 default_sampling: dict, cfg: ServeConfig):
        self.engine = engine
        self.served_model_names = served_model_names
        self.default_sampling = default_sampling
        self.cfg = cfg
        self.api_key_digest = key_digest(cfg.api_key)
        self.http_counts: Counter = Counter()
        self.tokenizer = engine.llm.get_tokenizer()
        self.embedding = is_embedding_model(engine.llm)
        self.created = int(time.time())
        self.facts = model_facts(engine.llm, self.tokenizer, cfg)
        self.tables = request_tables(self.facts)
        self.known = {name: frozenset(t) for name, t in self.tables.items()}
        self.prompts = PromptProcessor(self.tokenizer, self.facts.max_model_len,
                                       self.facts.max_prompt_tokens)
        # served LoRA adapters by name (serve.lora_modules): a request's "model" selects one
        from runner.serve.config import lora_requests
        self.lora_requests = lora_requests(getattr(cfg, "lora_modules", None))

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def max_model_len(self) -> int:
        return self.facts.max_model_len

    def check_model(self, name: Optional[str]) -> str:
        """The served name the response carries (the request's, or the first)."""
        if name is None:
            return self.model_name
        if name not in self.served_model_names and name not in self.lora_requests:
            raise APIError(404, f"The model `{name}` does not exist; this server serves "
                                f"{self.served_model_names[0]!r} (GET /v1/models).", "model")
        return name

    async def read_body(self, request: Request) -> dict:
        raw = await read_body(request.receive, request.headers, self.cfg.max_body_bytes)
        if len(raw) <= _PARSE_INLINE_BYTES:
            return parse_json(raw, self.cfg.max_json_depth)
        return await asyncio.get_running_loop().run_in_executor(
            None, parse_json, raw, self.cfg.max_json_depth)

    async def read_request(self, request: Request, table: str,
                           body: Optional[dict] = None) -> dict:
        if body is None:
            body = await self.read_body(request)
        return validate(body, self.tables[table], NOT_IMPLEMENTED)
