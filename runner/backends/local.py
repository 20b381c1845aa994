"""The local backend: runner.engine in this process, through its public API only.

    LocalBackend(EngineArgs)  -> LLM(**args): validates every argument and loads the model
      submit(id, Request)     -> LLMEngine.add_request(id, {"prompt_token_ids": ...}, params)
                                 (with the run's LoRA adapter, model.lora, when it has one)
      results()               -> LLMEngine.step(): the requests that finished (the engine's
                                 stream_outputs is off, as in LLM.generate: a RequestOutput per
                                 running request and step was most of the host time of a
                                 throughput run, and twice that inside a Ray actor; measured)
      abort(ids)              -> LLMEngine.abort_request(ids)
      stats()                 -> LLMEngine.get_stats()
      close()                 -> LLMEngine.shutdown() (tensor-parallel workers stop now)
    engine.profiler_config    -> LLM.start_profile() once the model is loaded, stop_profile()
                                 in close(): one torch trace of the whole run
      encode(texts)           -> LLM.encode (embedding models)

A step that raises may leave outputs of requests that did finish (async output processing
holds a step's outputs back by one step): `results()` hands those out first and raises the
error on the next call, so finished items are journaled, not lost.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Iterable, Optional

from runner.tasks.api import Request

log = logging.getLogger("runner.backend")


class LocalBackend:
    kind = "local"

    def __init__(self, args: Any, cpu_threads: Optional[int] = None,
                 lora_path: Optional[str] = None):
        import os

        from runner.engine import LLM
        from runner.engine.lora.request import LoRARequest

        from runner.backends.engine_args import apply_cpu_threads

        self.args = args
        self.cpu_threads = cpu_threads
        if cpu_threads is not None:
            apply_cpu_threads(cpu_threads)
            log.info("CPU engine: %d torch thread(s) (cpu_threads)", cpu_threads)
        t0 = time.time()
        self.llm = LLM(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)})
        self.load_seconds = time.time() - t0
        self.is_embedding_model = bool(self.llm.is_embedding_model)
        self.engine = self.llm.llm_engine  # None for an embedding model
        if self.engine is not None:
            self.engine.stream_outputs = False
        self._pooling = self.llm.pooling_runner
        self._in_flight: set[str] = set()
        self._error: Optional[BaseException] = None
        self._closed = False
        self.lora_request = None
        if lora_path:
            path = os.path.abspath(os.path.expanduser(lora_path))
            self.lora_request = LoRARequest(os.path.basename(path.rstrip(os.sep)) or "lora", 1,
                                            path)
            if self.engine is not None:     # check the folder now, before any request
                self.engine.executor.model_runner.lora_manager.get_adapter(self.lora_request)
        self._profiling = bool(getattr(args, "profiler_config", None))
        if self._profiling:
            self.llm.start_profile()
            log.info("torch profiler on (engine.profiler_config): the trace is written when "
                     "the run ends")

    # ------------------------------------------------------------------ what the run needs
    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def _model_config(self) -> Any:
        owner = self.engine if self.engine is not None else self._pooling
        return getattr(owner, "model_config", None)

    @property
    def max_model_len(self) -> Optional[int]:
        return getattr(self._model_config(), "max_model_len", None)

    def model_info(self) -> dict:
        mc = self._model_config()
        hf = getattr(mc, "hf_config", None)
        dtype = getattr(mc, "dtype", None)
        return {
            "resolved": getattr(mc, "model", None),
            "local_path": getattr(mc, "model_path", None),
            "revision": getattr(mc, "revision", None),
            "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
            "max_model_len": getattr(mc, "max_model_len", None),
            "vocab_size": getattr(hf, "vocab_size", None),
            "weight_files": list(getattr(mc, "weight_files", []) or []),
            "load_seconds": round(self.load_seconds, 3),
            "lora": None if self.lora_request is None else {
                "name": self.lora_request.lora_name, "path": self.lora_request.lora_path},
        }

    @property
    def num_in_flight(self) -> int:
        """Requests submitted and neither finished nor aborted (a Ray replica steps while > 0)."""
        return len(self._in_flight)

    # ------------------------------------------------------------------ the protocol
    def submit(self, request_id: str, request: Request) -> None:
        self._generative("submit")
        self.engine.add_request(request_id, {"prompt_token_ids": list(request.prompt_token_ids)},
                                request.params, lora_request=self.lora_request)
        self._in_flight.add(request_id)

    def results(self) -> list:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if not self._in_flight:
            raise RuntimeError("results() called with no request in flight")
        if not self.engine.has_unfinished_requests():
            lost = sorted(self._in_flight)
            raise RuntimeError(f"the engine finished without outputs for {len(lost)} requests: "
                               f"{lost[:5]}")
        try:
            outs = self.engine.step()
        except BaseException as exc:
            # not in the engine's documented API everywhere: without it, at most the last
            # step's finished requests are generated again on resume
            held = getattr(self.engine, "take_held_outputs", list)()
            if not held:
                raise
            self._error = exc
            outs = held
        for out in outs:
            if out.finished:
                self._in_flight.discard(out.request_id)
        return outs

    def abort(self, request_ids: Iterable[str]) -> None:
        ids = [rid for rid in request_ids if rid in self._in_flight]
        if ids and self.engine is not None:
            self.engine.abort_request(ids)
        self._in_flight.difference_update(ids)

    def stats(self) -> dict:
        owner = self.engine if self.engine is not None else self._pooling
        return dict(owner.get_stats()) if owner is not None else {}

    def encode(self, texts: list[str]) -> list[list[float]]:
        if not self.is_embedding_model:
            raise ValueError("encode() needs an embedding model")
        outs = self.llm.embed(list(texts), use_tqdm=False)
        return [list(o.outputs.embedding) for o in outs]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._in_flight and self.engine is not None:
            self.engine.abort_request(sorted(self._in_flight))
            self._in_flight.clear()
        try:
            if self._profiling:
                self._profiling = False
                self.llm.stop_profile()
        finally:
            if self.engine is not None:
                self.engine.shutdown()

    def _generative(self, what: str) -> None:
        if self.engine is None:
            raise ValueError(f"{what}(): the model is an embedding model; it has no generation "
                             "engine (use mode=embed)")
