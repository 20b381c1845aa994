"""The remote backend: an OpenAI-compatible server (`python -m runner.serve`, vLLM, a hosted
API) answers the run's requests over /v1/completions (and /v1/embeddings for mode=embed).

    RemoteBackend.from_config(cfg, source)   engine.url is required; the server is asked for
                                             /v1/models once, so a wrong URL fails before the
                                             run folder exists
      submit(id, Request)  -> a worker thread POSTs /v1/completions
      results()            -> the requests finished since the last call (waits briefly)
      abort(ids) / stats() / close() (the HTTP client and the thread pool)

The prompt goes as token ids (engine.remote_prompt=token_ids: exactly what the local engine
runs) or as text (remote_prompt=text, for servers with another tokenizer). Each request is one
HTTP call: streamed (the first-token time is measured), or, with return_token_ids or a request
for prompt logprobs, one plain call. Prompt logprobs use vLLM's server extension: the
`prompt_logprobs` field of /v1/completions, answered per choice as
[null, {"<token id>": {"logprob", "rank", "decoded_token"}}, ...] (vLLM 0.24), turned here into
the engine's RequestOutput.prompt_logprobs ([None, {id: Logprob}]). SamplingParams map onto
OpenAI's fields; vLLM's extras (top_k, min_p, use_beam_search, ...) are sent only when they
differ from their defaults, so a hosted API that rejects unknown fields still works for plain
sampling. Connection errors, 429 and 5xx are retried; any other 4xx fails the request loudly.
"""
from __future__ import annotations

import dataclasses

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional, Union

from runner.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from runner.engine.sampling_params import SamplingParams
from runner.tasks.api import Request

logger = logging.getLogger("runner.remote")

_RETRY_STATUS = {429, 500, 502, 503, 504}
# vLLM's extra request fields and their defaults: sent only when a request differs.
_VLLM_EXTRAS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "use_beam_search": False,
                "length_penalty": 1.0, "early_stopping": False, "stop_token_ids": [],
                "ignore_eos": False, "min_tokens": 0, "skip_special_tokens": True,
                "include_stop_str_in_output": False, "prompt_logprobs": None,
                "logit_bias": None, "allowed_token_ids": None, "bad_words": []}
REMOTE_PROMPTS = ("token_ids", "text")


class RemoteRequestError(RuntimeError):
    """The server refused a request (4xx), kept failing after the retries, or is unreachable."""


class _Retry(Exception):
    pass


def api_base(url: str) -> str:
    base = url.rstrip("/")
    for tail in ("/completions", "/chat/completions", "/embeddings"):
        if base.endswith(tail):
            base = base[: -len(tail)]
    return base if base.endswith("/v1") else base + "/v1"


def completions_url(url: str) -> str:
    return api_base(url) + "/completions"


def request_body(model: str, prompt: Union[str, list], p: SamplingParams, stream: bool,
                 return_token_ids: bool) -> dict:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "n": p.n,
                            "temperature": p.temperature, "top_p": p.top_p, "stream": stream}
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.best_of is not None and p.best_of != p.n:
        body["best_of"] = p.best_of
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(p, name):
            body[name] = getattr(p, name)
    if p.logprobs is not None:
        body["logprobs"] = p.logprobs
    for name, default in _VLLM_EXTRAS.items():
        value = getattr(p, name, default)
        if name == "top_k" and value == -1:
            continue                        # -1 and 0 both disable top-k (vLLM 0.24)
        if value != default and not (value in (None, []) and default in (None, [])):
            if isinstance(value, dict):     # logit_bias: JSON keys are strings
                value = {str(k): v for k, v in value.items()}
            body[name] = list(value) if isinstance(value, (list, tuple)) else value
    so = getattr(p, "structured_outputs", None)
    if so is not None:                      # vLLM 0.24's server field of the same name
        body["structured_outputs"] = {k: v for k, v in dataclasses.asdict(so).items()
                                      if not k.startswith("_") and v not in (None, False)}
    if return_token_ids:
        body["return_token_ids"] = True
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def parse_prompt_logprobs(entries: Optional[list]) -> Optional[list]:
    """vLLM's JSON prompt_logprobs -> [None | {token_id: Logprob}] (keys back to ints)."""
    if entries is None:
        return None
    out: list = []
    for pos in entries:
        if pos is None:
            out.append(None)
            continue
        out.append({int(tid): Logprob(float(v["logprob"]), v.get("rank"), v.get("decoded_token"))
                    for tid, v in pos.items()})
    return out


def load_tokenizer(name: Optional[str], trust_remote_code: bool = False):
    """A HF tokenizer from a folder, hub id or .gguf file; None when it cannot be loaded."""
    if not name:
        return None
    from transformers import AutoTokenizer

    try:
        if str(name).endswith(".gguf"):
            return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(name)),
                                                 gguf_file=os.path.basename(name))
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # no tokenizer: prompts must then be text, token ids stay empty
        logger.warning("remote engine: no local tokenizer from %r (%s)", name, exc)
        return None


class RemoteBackend:
    kind = "remote"
    is_embedding_model = False

    def __init__(self, url: str, model: str, tokenizer: Any = None,
                 api_key: Optional[str] = None, max_concurrency: int = 32,
                 request_timeout: float = 600.0, return_token_ids: bool = False,
                 remote_prompt: str = "token_ids", max_retries: int = 3,
                 transport: Any = None):
        import httpx

        if remote_prompt not in REMOTE_PROMPTS:
            raise ValueError(f"engine.remote_prompt={remote_prompt!r}; allowed: "
                             f"{' | '.join(REMOTE_PROMPTS)}")
        self.base = api_base(url)
        self.url = self.base + "/completions"
        self.model = model
        self.tokenizer = tokenizer
        self.return_token_ids = return_token_ids
        self.remote_prompt = remote_prompt
        self.max_retries = max_retries
        self.max_model_len: Optional[int] = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=request_timeout, transport=transport,
                                   limits=httpx.Limits(max_connections=max_concurrency))
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="remote")
        self._futures: dict[str, Any] = {}
        self._done: queue.Queue = queue.Queue()
        self._aborted: set[str] = set()
        self._lock = threading.Lock()
        self._stats = {"num_requests": 0, "num_prompt_tokens": 0, "num_generation_tokens": 0,
                       "num_retries": 0, "num_steps": 0}

    @classmethod
    def from_config(cls, cfg: Any, source: Any) -> "RemoteBackend":
        e, m = cfg.engine, cfg.model
        if not e.url:
            raise ValueError("engine.url is required with engine=remote, e.g. "
                             "engine.url=http://127.0.0.1:8000/v1")
        tok = m.tokenizer or (source.model if source is not None else m.model)
        backend = cls(e.url, e.served_model_name or m.model,
                      load_tokenizer(tok, m.trust_remote_code),
                      api_key=e.api_key or os.environ.get("OPENAI_API_KEY"),
                      max_concurrency=e.max_concurrency, request_timeout=e.request_timeout,
                      return_token_ids=e.return_token_ids, remote_prompt=e.remote_prompt)
        try:
            backend.connect()
        except BaseException:
            backend.close()
            raise
        return backend

    def connect(self) -> None:
        """Ask /v1/models once: an unreachable server or a refused key fails here."""
        import httpx

        try:
            r = self.client.get(self.base + "/models", timeout=10.0)
        except httpx.TransportError as exc:
            raise RemoteRequestError(f"engine.url={self.base}: cannot connect "
                                     f"({type(exc).__name__}: {exc})") from None
        if r.status_code in (401, 403):
            raise RemoteRequestError(f"engine.url={self.base}: HTTP {r.status_code}, the server "
                                     "refused the API key (engine.api_key or $OPENAI_API_KEY)")
        if r.status_code == 200:
            try:
                for entry in r.json().get("data", []):
                    if entry.get("id") == self.model and entry.get("max_model_len"):
                        self.max_model_len = int(entry["max_model_len"])
            except (ValueError, AttributeError, TypeError):
                pass

    def model_info(self) -> dict:
        return {"resolved": f"{self.model} @ {self.base}", "revision": None, "dtype": None,
                "max_model_len": self.max_model_len, "weight_files": [],
                "vocab_size": len(self.tokenizer) if self.tokenizer is not None else None}

    # ------------------------------------------------------------------ the protocol
    def submit(self, request_id: str, request: Request) -> None:
        if request_id in self._futures:
            raise ValueError(f"request_id {request_id!r} is already in flight.")
        ids = list(request.prompt_token_ids) if request.prompt_token_ids is not None else None
        text = request.prompt
        if self.remote_prompt == "text" and text is None:
            raise ValueError(f"request {request_id}: engine.remote_prompt=text but the request "
                             "has no prompt text")
        if ids is None and text is None:
            raise ValueError(f"request {request_id}: no prompt token ids and no text")
        self._futures[request_id] = self.pool.submit(self._run, request_id, text, ids,
                                                     request.params, time.time())

    def results(self) -> list[RequestOutput]:
        """The requests finished since the last call (waits up to 0.2 s for the first one)."""
        if not self._futures:
            raise RuntimeError("results() called with no request in flight")
        items = []
        try:
            items.append(self._done.get(timeout=0.2))
            while True:
                items.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self._stats["num_steps"] += 1
        outputs = []
        for rid, result in items:
            with self._lock:
                if rid in self._aborted:
                    self._aborted.discard(rid)
                    continue
            self._futures.pop(rid, None)
            if isinstance(result, BaseException):
                self.abort(list(self._futures))
                raise result
            outputs.append(result)
        return outputs

    def abort(self, request_ids: Iterable[str]) -> None:
        for rid in list(request_ids):
            fut = self._futures.pop(rid, None)
            if fut is not None:
                fut.cancel()
                with self._lock:
                    self._aborted.add(rid)

    def stats(self) -> dict:
        return {**self._stats, "device": "remote", "url": self.base, "model": self.model}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def encode(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self.model, "input": list(texts)}
        data = self._post_json(self.base + "/embeddings", body)
        rows = sorted(data.get("data", []), key=lambda d: d.get("index", 0))
        if len(rows) != len(texts):
            raise RemoteRequestError(f"{self.base}/embeddings answered {len(rows)} embeddings "
                                     f"for {len(texts)} inputs")
        return [list(r["embedding"]) for r in rows]

    # ------------------------------------------------------------------ HTTP calls
    def _run(self, rid: str, text: Optional[str], ids: Optional[list], params: SamplingParams,
             arrival: float) -> None:
        try:
            result = self._call(rid, text, ids, params, arrival)
        except BaseException as exc:  # handed to results(), which raises it in the caller
            result = exc
        self._done.put((rid, result))

    def _call(self, rid, text, ids, params, arrival) -> RequestOutput:
        want_prompt_lps = params.prompt_logprobs is not None
        plain = self.return_token_ids or want_prompt_lps  # vLLM has no streamed prompt logprobs
        as_text = self.remote_prompt == "text" or ids is None
        # prompt logprobs of a text prompt are aligned through the server's prompt token ids
        body = request_body(self.model, text if as_text else ids, params, not plain,
                            self.return_token_ids or (want_prompt_lps and as_text))
        for attempt in range(self.max_retries + 1):
            sent = time.time()
            try:
                if plain:
                    choices, first, usage_ = self._post(body)
                else:
                    choices, first, usage_ = self._post_stream(body)
                break
            except _Retry as exc:
                if attempt == self.max_retries:
                    raise RemoteRequestError(f"request {rid}: {exc} (after {attempt} retries)")
                self._stats["num_retries"] += 1
                time.sleep(min(2 ** attempt * 0.5, 8.0))
        done = time.time()
        outs = []
        prompt_lps = None
        for index in sorted(choices):
            c = choices[index]
            token_ids = c.get("token_ids")
            if token_ids is None:
                token_ids = (list(self.tokenizer.encode(c["text"], add_special_tokens=False))
                             if self.tokenizer is not None else [])
            lps = c.get("token_logprobs")
            cum = float(sum(x for x in lps if x is not None)) if lps else None
            logprobs = None
            if params.logprobs is not None and lps is not None and c.get("token_ids"):
                logprobs = [{tid: Logprob(lp, None, tok)} for tid, lp, tok
                            in zip(token_ids, lps, c.get("tokens") or [None] * len(lps))]
            if prompt_lps is None:
                prompt_lps = parse_prompt_logprobs(c.get("prompt_logprobs"))
            outs.append(CompletionOutput(index=len(outs), text=c["text"], token_ids=token_ids,
                                         cumulative_logprob=cum, logprobs=logprobs,
                                         finish_reason=c.get("finish_reason"),
                                         stop_reason=c.get("stop_reason")))
        if want_prompt_lps and prompt_lps is None:
            raise RemoteRequestError(
                f"{self.url} returned no prompt_logprobs for request {rid}: loglikelihood and "
                "multiple-choice tasks need a server with vLLM's prompt_logprobs extension "
                "(vLLM or python -m runner.serve)")
        prompt_ids = (usage_ or {}).get("prompt_token_ids") or ids
        if prompt_ids is None and text is not None and self.tokenizer is not None:
            prompt_ids = list(self.tokenizer(text).input_ids)
        prompt_ids = list(prompt_ids or [])
        self._stats["num_requests"] += 1
        self._stats["num_prompt_tokens"] += len(prompt_ids)
        self._stats["num_generation_tokens"] += sum(len(o.token_ids) for o in outs)
        metrics = RequestMetrics(arrival_time=arrival, last_token_time=done,
                                 first_scheduled_time=sent, first_token_time=first,
                                 time_in_queue=sent - arrival, finished_time=done)
        return RequestOutput(request_id=rid, prompt=text, prompt_token_ids=prompt_ids,
                             prompt_logprobs=prompt_lps, outputs=outs, finished=True,
                             metrics=metrics)

    def _check(self, status: int, payload: str, url: str) -> None:
        if status in _RETRY_STATUS:
            raise _Retry(f"HTTP {status}: {payload[:300]}")
        if status >= 400:
            try:
                msg = json.loads(payload).get("error", {}).get("message", payload)
            except (ValueError, AttributeError):
                msg = payload
            raise RemoteRequestError(f"{url} answered HTTP {status}: {msg}")

    def _post_json(self, url: str, body: dict) -> dict:
        import httpx

        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.post(url, json=body)
                self._check(r.status_code, r.text, url)
                return r.json()
            except (_Retry, httpx.TransportError) as exc:
                if attempt == self.max_retries:
                    raise RemoteRequestError(f"{url}: {exc} (after {attempt} retries)") from None
                self._stats["num_retries"] += 1
                time.sleep(min(2 ** attempt * 0.5, 8.0))
        raise AssertionError("unreachable")

    def _post(self, body: dict):
        import httpx

        try:
            r = self.client.post(self.url, json=body)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        self._check(r.status_code, r.text, self.url)
        data = r.json()
        choices = {}
        for ch in data.get("choices", []):
            c = choices[ch["index"]] = {"text": ch.get("text", ""),
                                        "finish_reason": ch.get("finish_reason"),
                                        "stop_reason": ch.get("stop_reason"),
                                        "token_ids": ch.get("token_ids"),
                                        "prompt_logprobs": ch.get("prompt_logprobs")}
            if ch.get("logprobs"):
                c["token_logprobs"] = ch["logprobs"].get("token_logprobs")
                c["tokens"] = ch["logprobs"].get("tokens")
        first_ids = next((ch.get("prompt_token_ids") for ch in data.get("choices", [])), None)
        usage_ = dict(data.get("usage") or {})
        if first_ids is not None:
            usage_["prompt_token_ids"] = first_ids
        return choices, None, usage_

    def _post_stream(self, body: dict):
        import httpx

        choices: dict[int, dict] = {}
        first = None
        usage_ = None
        try:
            with self.client.stream("POST", self.url, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r.status_code, r.text, self.url)
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RemoteRequestError(f"{self.url}: {chunk['error']}")
                    usage_ = chunk.get("usage") or usage_
                    for ch in chunk.get("choices") or []:
                        c = choices.setdefault(ch["index"], {"text": "", "token_logprobs": None})
                        if ch.get("text"):
                            first = first or time.time()
                        c["text"] += ch.get("text") or ""
                        if ch.get("finish_reason") is not None:
                            c["finish_reason"] = ch["finish_reason"]
                            c["stop_reason"] = ch.get("stop_reason")
                        lp = ch.get("logprobs") or {}
                        if lp.get("token_logprobs") is not None:
                            c["token_logprobs"] = (c["token_logprobs"] or []) + lp["token_logprobs"]
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        return choices, first, usage_
