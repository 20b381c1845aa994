"""The Ray backend: engine.data_parallel_size replicas of the local engine, one work queue.

    RayBackend(EngineArgs, cpu_threads, DistributedConfig)
      connect to Ray, check that the replicas fit         runner/backends/ray_cluster.py
      N actors (runner/backends/ray_replica.py), each with its resources (tensor_parallel_size
      GPUs on one node, or CPUs), load in parallel; replica_start_timeout_s bounds the wait
    submit(id, Request)   -> the driver's WorkQueue (runner/backends/dispatch.py)
    results()             every live replica keeps PIPELINE_DEPTH calls in flight: each call
                          hands it what it has room for from the queue, steps its engine for
                          distributed.replica_call_s and brings back the requests that finished;
                          results() waits for the first call back and returns its outputs
                          (finished ones only), so the request loop (runner/run/loop.py) journals
                          each item as it comes, in this one process: predictions.jsonl has one
                          writer and resume stays item-exact
    a replica that dies   (RayActorError: killed, crashed, its node lost) has what it held put
                          back at the front of the queue for the others; the failure goes to
                          the log (run.log) and to `on_failure` (the lifecycle writes it into
                          manifest.json at once); when none is left the run fails
    abort(ids), stats(), model_info(), encode(texts), close() as the protocol says
                          (runner/backends/__init__.py); stats() sums the engines' token
                          counters and lists each replica's numbers under "data_parallel"

An engine error inside a replica (a bad request) is not a death: it fails the run, as it does
with the local backend. Timestamps in the outputs' metrics are the replica's clock.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterable, Optional

from runner.backends.dispatch import WorkQueue
from runner.backends.ray_cluster import (ClusterError, check_capacity, connect,
                                         replica_resources)
from runner.backends.ray_replica import EngineReplica
from runner.tasks.api import Request

log = logging.getLogger("runner.backend")

# Calls in flight per replica: while the driver journals one call's items, the next call is
# already stepping the engine, so a replica never waits for the driver.
PIPELINE_DEPTH = 2
# Engine counters that add up across replicas; the other stats are per replica.
SUMMED_STATS = ("num_prompt_tokens", "num_generation_tokens", "num_preemptions",
                "num_swapped_out", "num_swapped_in")
CLOSE_TIMEOUT_S = 60.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _death_errors(ray) -> tuple:
    ex = ray.exceptions
    names = ("RayActorError", "ObjectLostError", "WorkerCrashedError", "NodeDiedError",
             "OwnerDiedError", "LocalRayletDiedError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


def _cause(exc: BaseException) -> BaseException:
    """The replica's own exception inside Ray's RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class RayBackend:
    kind = "ray"

    def __init__(self, args: Any, cpu_threads: Optional[int], distributed: Any):
        self.args = args  # the run's EngineArgs (data_parallel_size = the number of replicas)
        self.cpu_threads = cpu_threads
        self.on_failure: Optional[Callable[[dict], None]] = None
        self.failures: list[dict] = []
        self._closed = False
        self._actors: dict[int, Any] = {}
        self._calls: dict[Any, int] = {}  # ObjectRef of a run() call -> replica
        n = int(args.data_parallel_size)
        self._conn = connect(distributed.ray_address)
        self.ray = ray = self._conn.ray
        self._death = _death_errors(ray)
        try:
            res = replica_resources(args.device, args.tensor_parallel_size,
                                    distributed.num_cpus_per_replica, cpu_threads, ray)
            check_capacity(res, n, ray, self._conn.address)
            self.resources = res
            # each actor is one replica: one LLM, data_parallel_size=1, on the device Ray gives
            self.replica_args = dataclasses.replace(args, data_parallel_size=1, device=res.device)
            self.call_s = float(distributed.replica_call_s)
            capacity = distributed.replica_queue_size or 2 * int(args.max_num_seqs)
            self._queue = WorkQueue(range(n), capacity)
            self.replicas = {i: {"replica": i, "status": "starting", "requests": 0,
                                 "prompt_tokens": 0, "output_tokens": 0, "calls": 0,
                                 "busy_s": 0.0, "stats": {}} for i in range(n)}
            log.info("data parallel: %d replica(s) on Ray (ray_address %s), each on %s%s", n,
                     self._conn.address, res.device,
                     f" with {res.num_gpus} GPU(s)" if res.num_gpus else
                     f" with {res.num_cpus:g} CPU(s), {res.cpu_threads} torch thread(s)")
            self._start(n, res, float(distributed.replica_start_timeout_s))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ start
    def _start(self, n: int, res: Any, timeout_s: float) -> None:
        ray = self.ray
        actor_cls = ray.remote(EngineReplica)
        t0 = time.time()
        loads = {}
        for i in range(n):
            actor = actor_cls.options(num_gpus=res.num_gpus, num_cpus=res.num_cpus,
                                      max_restarts=0, name=None).remote(i)
            self._actors[i] = actor
            loads[actor.load.remote(self.replica_args, res.cpu_threads)] = i
        ready, waiting = ray.wait(list(loads), num_returns=n, timeout=timeout_s)
        infos: dict[int, dict] = {}
        for ref in ready:
            i = loads[ref]
            try:
                infos[i] = ray.get(ref)
            except self._death as exc:
                raise RuntimeError(f"replica {i} died while loading the model: "
                                   f"{str(exc).strip().splitlines()[0]}") from exc
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from exc
        if waiting:
            raise ClusterError(
                f"{len(waiting)} of {n} replicas did not start within "
                f"distributed.replica_start_timeout_s={timeout_s:g}s: Ray has no free "
                f"{'GPUs' if res.num_gpus else 'CPUs'} for them (each asks for "
                f"{res.num_gpus} GPU(s), {res.num_cpus:g} CPU(s)); free the cluster or lower "
                "engine.data_parallel_size")
        self.load_seconds = time.time() - t0
        first = infos[0]
        self.tokenizer = first["tokenizer"]
        self.max_model_len = first["max_model_len"]
        self.is_embedding_model = bool(first["is_embedding_model"])
        self._model_info = dict(first["model_info"])
        for i, info in infos.items():
            self.replicas[i].update(info["where"], status="alive", stats=info["stats"],
                                    load_seconds=info["model_info"].get("load_seconds"))

    # ------------------------------------------------------------------ what the run needs
    def model_info(self) -> dict:
        return {**self._model_info, "load_seconds": round(self.load_seconds, 3)}

    def manifest_entry(self) -> dict:
        """manifest.json's backend entry beyond the engine args: the replicas and failures."""
        keep = ("replica", "status", "host", "pid", "cuda_visible_devices", "requests",
                "output_tokens", "error")
        return {"data_parallel_size": len(self.replicas),
                "ray_address": self._conn.address,
                "replica_resources": dataclasses.asdict(self.resources),
                "replicas": [{k: r[k] for k in keep if k in r} for r in self.replicas.values()],
                "failures": list(self.failures)}

    # ------------------------------------------------------------------ the protocol
    def submit(self, request_id: str, request: Request) -> None:
        if self.is_embedding_model:
            raise ValueError("submit(): the model is an embedding model; it has no generation "
                             "engine (use mode=embed)")
        self._queue.put(request_id, request)

    def results(self) -> list:
        if not self._queue.outstanding:
            raise RuntimeError("results() called with no request in flight")
        ray = self.ray
        self._dispatch()
        ready, rest = ray.wait(list(self._calls), num_returns=1)
        if rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        outs: list = []
        for ref in ready:
            if ref not in self._calls:
                continue  # a call of a replica that failed meanwhile
            i = self._calls.pop(ref)
            try:
                finished, stats, busy = ray.get(ref)
            except self._death as exc:
                self._failed(i, exc)
                continue
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from exc
            rec = self.replicas[i]
            rec["calls"] += 1
            rec["busy_s"] += busy
            rec["stats"] = stats
            for out in finished:
                if self._queue.finish(i, out.request_id):
                    outs.append(out)
                    rec["requests"] += 1
                    rec["prompt_tokens"] += len(out.prompt_token_ids or [])
                    rec["output_tokens"] += sum(len(c.token_ids) for c in out.outputs)
        self._dispatch()
        return outs

    def _dispatch(self) -> None:
        alive = self._queue.alive
        # each replica's share of what waits: the first round splits a short run evenly
        share = -(-self._queue.queued // len(alive)) if alive else 0
        for i in alive:
            budget = share
            in_flight = sum(1 for r in self._calls.values() if r == i)
            while in_flight < PIPELINE_DEPTH:
                new = self._queue.take(i, limit=budget)
                budget -= len(new)
                if not new and not self._queue.held(i):
                    break
                self._calls[self._actors[i].run.remote(new, self.call_s)] = i
                in_flight += 1
        if not self._calls and self._queue.outstanding:
            raise RuntimeError(f"{self._queue.outstanding} requests are left and no replica "
                               "runs them")

    def _failed(self, i: int, exc: BaseException) -> None:
        requeued = self._queue.fail(i)
        for ref in [r for r, owner in self._calls.items() if owner == i]:
            del self._calls[ref]
        try:
            self.ray.kill(self._actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        rec = self.replicas[i]
        rec.update(status="failed", error=f"{type(exc).__name__}: {error}")
        alive = self._queue.alive
        failure = {"replica": i, "host": rec.get("host"), "time": _now(),
                   "error": rec["error"], "requeued_requests": len(requeued),
                   "replicas_left": len(alive)}
        self.failures.append(failure)
        log.error("replica %d (host %s) failed: %s; its %d in-flight requests go back to the "
                  "queue for the %d replica(s) left", i, rec.get("host"), rec["error"],
                  len(requeued), len(alive))
        if self.on_failure is not None:
            self.on_failure(failure)
        if not alive:
            raise RuntimeError(f"every replica of engine.data_parallel_size={len(self.replicas)} "
                               f"failed (the last: {rec['error']}); finished items are kept, "
                               "resume the run to do the rest")

    def abort(self, request_ids: Iterable[str]) -> None:
        for i, rids in self._queue.abort(list(request_ids)).items():
            self._actors[i].abort.remote(rids)

    def stats(self) -> dict:
        alive = [r for r in self.replicas.values() if r["stats"]]
        out = dict(alive[0]["stats"]) if alive else {}
        for key in SUMMED_STATS:
            if any(key in r["stats"] for r in alive):
                out[key] = sum(r["stats"].get(key, 0) for r in alive)
        replicas = []
        for r in self.replicas.values():
            row = {k: v for k, v in r.items() if k != "stats"}
            row["output_tokens_per_busy_s"] = (r["output_tokens"] / r["busy_s"]
                                               if r["busy_s"] > 0 else None)
            row["engine_stats"] = r["stats"]
            replicas.append(row)
        out["data_parallel"] = {"size": len(self.replicas), "alive": len(self._queue.alive),
                                "ray_address": self._conn.address, "replicas": replicas,
                                "failures": list(self.failures)}
        return out

    def encode(self, texts: list[str]) -> list[list[float]]:
        if not self.is_embedding_model:
            raise ValueError("encode() needs an embedding model")
        alive = self._queue.alive
        size = -(-len(texts) // len(alive)) if texts else 0
        chunks = [(i, texts[k * size:(k + 1) * size]) for k, i in enumerate(alive)]
        refs = [self._actors[i].encode.remote(chunk) for i, chunk in chunks if chunk]
        try:
            parts = self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from exc
        return [vec for part in parts for vec in part]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = getattr(self, "ray", None)
        if ray is None:
            return
        try:
            closing = [a.close.remote() for i, a in self._actors.items()
                       if i not in self._queue.failed] if hasattr(self, "_queue") else []
            if closing:
                ray.wait(closing, num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
        except Exception as exc:  # the engines go with their processes below all the same
            log.warning("closing the replicas: %s", exc)
        for actor in self._actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._actors.clear()
        self._calls.clear()
        if self._conn.started_here:
            ray.shutdown()
