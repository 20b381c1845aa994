"""RemoteLLM: the part of `runner.engine.LLM` the runner uses, answered by an OpenAI-compatible
server (`python -m runner.serve`, a vLLM server, a hosted API) over /v1/completions.

    RemoteLLM(url, model, tokenizer=...)          .generate(prompts, params) -> RequestOutputs
      .llm_engine  (RemoteEngine, LLMEngine's loop API):
         add_request(id, prompt, SamplingParams) -> a worker thread POSTs /v1/completions
         step() -> the RequestOutputs finished since the last step (finished=True only)
         has_unfinished_requests(), abort_request(), get_stats(), model_config

Each request is one HTTP call (stream=true, so the first-token time is measured; with
return_token_ids=true a non-streaming call that asks the server for the token ids, which vLLM
and runner.serve accept). SamplingParams map onto OpenAI's fields; vLLM's extra fields (top_k,
min_p, use_beam_search, ...) are sent only when they differ from their defaults, so a hosted
API that rejects unknown fields still works for plain sampling. Token ids of prompts given as
text and of outputs come from the local tokenizer when the server does not return them.
Connection errors, 429 and 5xx are retried; any other 4xx fails the request loudly.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

from runner.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from runner.engine.sampling_params import SamplingParams

logger = logging.getLogger("runner.remote")

_RETRY_STATUS = {429, 500, 502, 503, 504}
# vLLM's extra request fields and their defaults: sent only when a request differs.
_VLLM_EXTRAS = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "use_beam_search": False,
                "length_penalty": 1.0, "early_stopping": False, "stop_token_ids": [],
                "ignore_eos": False, "min_tokens": 0, "skip_special_tokens": True,
                "include_stop_str_in_output": False, "prompt_logprobs": None}


class RemoteRequestError(RuntimeError):
    """The server refused a request (4xx) or kept failing after the retries."""


def completions_url(url: str) -> str:
    base = url.rstrip("/")
    if base.endswith("/completions"):
        return base
    return base + ("/completions" if base.endswith("/v1") else "/v1/completions")


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
        if value != default and not (value in (None, []) and default in (None, [])):
            body[name] = list(value) if isinstance(value, (list, tuple)) else value
    if return_token_ids:
        body["return_token_ids"] = True
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


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


class RemoteEngine:
    """LLMEngine's request loop over HTTP: add_request / step / abort_request."""

    def __init__(self, url: str, model: str, tokenizer: Any = None, api_key: Optional[str] = None,
                 max_concurrency: int = 32, request_timeout: float = 600.0,
                 return_token_ids: bool = False, max_retries: int = 3):
        import httpx

        self.url = completions_url(url)
        self.model = model
        self.tokenizer = tokenizer
        self.return_token_ids = return_token_ids
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=request_timeout,
                                   limits=httpx.Limits(max_connections=max_concurrency))
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="remote")
        self.stream_outputs = False  # the runner reads finished outputs only
        self.requests: dict[str, Any] = {}
        self._done: queue.Queue = queue.Queue()
        self._aborted: set[str] = set()
        self._lock = threading.Lock()
        self.stats = {"num_requests": 0, "num_prompt_tokens": 0, "num_generation_tokens": 0,
                      "num_retries": 0, "num_steps": 0}
        self.model_config = SimpleNamespace(model=f"{model} @ {self.url}", revision=None,
                                            dtype=None, max_model_len=None, weight_files=[])

    def get_tokenizer(self):
        return self.tokenizer

    # ------------------------------------------------------------------ requests
    def add_request(self, request_id: str, prompt: Any, params: SamplingParams,
                    arrival_time: Optional[float] = None, **_: Any) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}.")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in the engine.")
        if isinstance(prompt, dict):
            ids = prompt.get("prompt_token_ids")
            text = prompt.get("prompt")
        elif isinstance(prompt, str):
            ids, text = None, prompt
        else:
            raise ValueError(f"a prompt must be a str or a dict, got {type(prompt).__name__}.")
        if ids is None and text is None:
            raise ValueError("a prompt dict needs 'prompt' (text) or 'prompt_token_ids'.")
        if ids is None and self.tokenizer is not None:
            ids = list(self.tokenizer(text).input_ids)
        arrival = arrival_time or time.time()
        self.requests[request_id] = self.pool.submit(
            self._run, request_id, text, ids, params, arrival)

    def abort_request(self, request_id: Union[str, Sequence[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            fut = self.requests.pop(rid, None)
            if fut is not None:
                fut.cancel()
                with self._lock:
                    self._aborted.add(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def step(self) -> list[RequestOutput]:
        """The requests finished since the last call (waits briefly for at least one)."""
        if not self.requests:
            return []
        items = []
        try:
            items.append(self._done.get(timeout=0.2))
            while True:
                items.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self.stats["num_steps"] += 1
        outputs = []
        for rid, result in items:
            with self._lock:
                if rid in self._aborted:
                    self._aborted.discard(rid)
                    continue
            self.requests.pop(rid, None)
            if isinstance(result, BaseException):
                self.abort_request(list(self.requests))
                raise result
            outputs.append(result)
        return outputs

    def get_stats(self) -> dict:
        return {**self.stats, "device": "remote", "url": self.url, "model": self.model}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # --------------------------------------------------------------- HTTP calls
    def _run(self, rid: str, text: Optional[str], ids: Optional[list], params: SamplingParams,
             arrival: float) -> None:
        try:
            result = self._call(rid, text, ids, params, arrival)
        except BaseException as exc:  # handed to step(), which raises it in the caller
            result = exc
        self._done.put((rid, result))

    def _call(self, rid, text, ids, params, arrival) -> RequestOutput:
        stream = not self.return_token_ids
        body = request_body(self.model, ids if ids is not None else text, params, stream,
                            self.return_token_ids)
        for attempt in range(self.max_retries + 1):
            sent = time.time()
            try:
                if stream:
                    choices, first, usage_ = self._post_stream(body)
                else:
                    choices, first, usage_ = self._post(body)
                break
            except _Retry as exc:
                if attempt == self.max_retries:
                    raise RemoteRequestError(f"request {rid}: {exc} (after {attempt} retries)")
                self.stats["num_retries"] += 1
                time.sleep(min(2 ** attempt * 0.5, 8.0))
        done = time.time()
        outs = []
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
            outs.append(CompletionOutput(index=len(outs), text=c["text"], token_ids=token_ids,
                                         cumulative_logprob=cum, logprobs=logprobs,
                                         finish_reason=c.get("finish_reason"),
                                         stop_reason=c.get("stop_reason")))
        prompt_ids = ids if ids is not None else (usage_ or {}).get("prompt_token_ids") or []
        self.stats["num_requests"] += 1
        self.stats["num_prompt_tokens"] += len(prompt_ids)
        self.stats["num_generation_tokens"] += sum(len(o.token_ids) for o in outs)
        metrics = RequestMetrics(arrival_time=arrival, last_token_time=done,
                                 first_scheduled_time=sent, first_token_time=first,
                                 time_in_queue=sent - arrival, finished_time=done)
        return RequestOutput(request_id=rid, prompt=text, prompt_token_ids=list(prompt_ids),
                             prompt_logprobs=None, outputs=outs, finished=True,
                             metrics=metrics)

    def _check(self, status: int, payload: str) -> None:
        if status in _RETRY_STATUS:
            raise _Retry(f"HTTP {status}: {payload[:300]}")
        if status >= 400:
            try:
                msg = json.loads(payload).get("error", {}).get("message", payload)
            except (ValueError, AttributeError):
                msg = payload
            raise RemoteRequestError(f"{self.url} answered HTTP {status}: {msg}")

    def _post(self, body: dict):
        import httpx

        try:
            r = self.client.post(self.url, json=body)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        self._check(r.status_code, r.text)
        data = r.json()
        choices = {}
        for ch in data.get("choices", []):
            c = choices[ch["index"]] = {"text": ch.get("text", ""),
                                        "finish_reason": ch.get("finish_reason"),
                                        "stop_reason": ch.get("stop_reason"),
                                        "token_ids": ch.get("token_ids")}
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
                    self._check(r.status_code, r.text)
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


class _Retry(Exception):
    pass


class RemoteLLM:
    """`LLM`'s surface the runner needs (generate, get_tokenizer, llm_engine) over HTTP."""

    def __init__(self, url: str, model: str, tokenizer: Any = None, **engine_kwargs: Any):
        if isinstance(tokenizer, str) or tokenizer is None:
            tokenizer = load_tokenizer(tokenizer)
        self.llm_engine = RemoteEngine(url, model, tokenizer, **engine_kwargs)
        self.request_counter = 0

    @classmethod
    def from_configs(cls, model_cfg: Any, engine_cfg: Any, seed: int = 0,
                     source: Any = None) -> "RemoteLLM":
        """From the runner's ModelConfig + EngineConfig (engine=remote engine.url=...)."""
        url = getattr(engine_cfg, "url", None)
        if not url:
            raise ValueError("engine.url is required with engine=remote, e.g. "
                             "engine.url=http://127.0.0.1:8000/v1")
        model = getattr(engine_cfg, "served_model_name", None) or model_cfg.model
        tok = model_cfg.tokenizer or (source.model if source is not None else model_cfg.model)
        api_key = getattr(engine_cfg, "api_key", None) or os.environ.get("OPENAI_API_KEY")
        return cls(url, model, load_tokenizer(tok, model_cfg.trust_remote_code),
                   api_key=api_key,
                   max_concurrency=getattr(engine_cfg, "max_concurrency", 32),
                   request_timeout=getattr(engine_cfg, "request_timeout", 600.0),
                   return_token_ids=getattr(engine_cfg, "return_token_ids", False))

    def get_tokenizer(self):
        return self.llm_engine.get_tokenizer()

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = False
                 ) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        params = sampling_params or SamplingParams()
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        engine = self.llm_engine
        ids = []
        for prompt, p in zip(prompts, params):
            rid = str(self.request_counter)
            self.request_counter += 1
            engine.add_request(rid, prompt, p)
            ids.append(rid)
        results: dict[str, RequestOutput] = {}
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    results[out.request_id] = out
        except BaseException:
            engine.abort_request(ids)
            raise
        return [results[rid] for rid in ids]
