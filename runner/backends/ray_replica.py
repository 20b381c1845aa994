"""One engine replica of a data-parallel run: a Ray actor around the local backend.

    EngineReplica(index)                   constructed empty: a bad engine value then comes back
                                           from load() as the engine's own exception
      load(EngineArgs, cpu_threads) -> dict
                                           LocalBackend(args): the one local engine, its
                                           EngineArgs built by runner/backends/engine_args.py on
                                           the driver (data_parallel_size=1: one replica each);
                                           returns what the driver needs (tokenizer,
                                           max_model_len, model_info, where it runs)
      run(new, budget_s) -> (finished RequestOutputs, engine stats, busy seconds)
                                           submits `new`, then steps the engine
                                           until budget_s has passed or nothing is in flight;
                                           only finished outputs travel back (an engine error
                                           after some finished: those first, the error next)
      abort(request_ids)                   drops requests (their outputs never come)
      encode(texts)                        embedding models (mode=embed)
      close()                              the engine shuts down (its tensor-parallel workers too)

The driver (runner/backends/ray.py) wraps this class with ray.remote and the replica's
resources; nothing here imports Ray, so the class also runs in-process (tests).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Optional


class EngineReplica:
    def __init__(self, index: int):
        self.index = index
        self.backend: Any = None
        self._error: Optional[BaseException] = None

    def load(self, args: Any, cpu_threads: Optional[int]) -> dict:
        from runner.backends.local import LocalBackend

        self.backend = LocalBackend(args, cpu_threads=cpu_threads)
        b = self.backend
        return {"stats": b.stats(), "tokenizer": b.tokenizer, "max_model_len": b.max_model_len,
                "is_embedding_model": b.is_embedding_model, "model_info": b.model_info(),
                "where": {"replica": self.index, "host": socket.gethostname(),
                          "pid": os.getpid(),
                          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}}

    def run(self, new: list, budget_s: float) -> tuple[list, dict, float]:
        b = self.backend
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        for rid, request in new:
            b.submit(rid, request)
        start = time.perf_counter()
        finished: list = []
        while b.num_in_flight:
            try:
                outs = b.results()
            except Exception as exc:
                if not finished:
                    raise
                # what finished before the error travels now; the error with the next call
                self._error = exc
                break
            finished += [out for out in outs if out.finished]
            if time.perf_counter() - start >= budget_s:
                break
        return finished, b.stats(), time.perf_counter() - start

    def abort(self, request_ids: list[str]) -> None:
        self.backend.abort(request_ids)

    def encode(self, texts: list[str]) -> list[list[float]]:
        return self.backend.encode(texts)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

