"""Worker processes for tensor parallelism: start ranks 1..N-1, watch them, stop them.

The driver (rank 0, the engine's process) spawns one process per other rank (`spawn`, as CUDA
needs), each with a duplex pipe: steps go down it (distributed.StepChannel), and status comes
up it ("alive" once imports are done, "ready" once its Worker is built, or the traceback of the
exception that killed it). A monitor thread waits on the processes' sentinels: when a worker
dies it records why, kills the others and aborts the device group, so the driver's pending
collective fails at once instead of hanging, and the engine raises a RuntimeError that names
the rank, its exit code and its traceback. A worker that hangs makes the driver's collectives
time out after `distributed_timeout_s`. Workers leave when the driver says so, when their pipe
reaches end-of-file, or when their parent process is gone: no orphans.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import tempfile
import threading
import time
import weakref
from typing import Optional

from runner.engine.config import EngineConfig
from runner.engine.distributed import SHUTDOWN, StepChannel, TensorParallelGroup

logger = logging.getLogger("runner.engine")


class WorkerFailure(RuntimeError):
    """A tensor-parallel worker died or stopped answering; the engine cannot go on."""


def _cleanup(procs: list, conns: list, holder: dict, init_file: str) -> None:
    """Stop every worker and leave the process group. The driver leaves the group while the
    workers do (NCCL's teardown waits for every rank), then waits for them to exit, and kills
    whoever is still there."""
    holder["closing"] = True
    for conn in conns:
        try:
            StepChannel([conn]).send(SHUTDOWN)
        except Exception:
            pass
    release = holder.pop("release_graphs", None)
    if release is not None:
        try:
            release()
        except Exception:            # a failed device must not stop the teardown
            logger.exception("releasing the driver's CUDA graphs failed")
    tp = holder.pop("tp", None)
    if tp is not None:
        failed = bool(holder.get("failed"))     # a peer is gone: it takes no part in teardown
        if not tp.destroy(timeout_s=5.0 if failed else 30.0, peers_alive=not failed):
            logger.warning("leaving the tensor-parallel process group did not finish")
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5.0)
    for conn in conns:
        conn.close()
    wake = holder.pop("wake", None)
    if wake is not None:
        wake.close()
    if os.path.exists(init_file):
        os.unlink(init_file)


def _watch(executor_ref, sentinels: dict, wake, holder: dict) -> None:
    """Monitor thread: wakes when a worker process ends, at shutdown, and twice a second to see
    whether the step in flight has outlived distributed_timeout_s (a hung rank: the driver's
    collective would otherwise wait on it for ever). Holds only a weak reference, so an engine
    that is dropped still gets its workers stopped by the finalizer."""
    while True:
        ready = mp.connection.wait([wake, *sentinels], timeout=0.5)
        if holder["closing"] or wake in ready:
            return
        executor = executor_ref()
        if executor is None:
            return
        if ready:
            executor.on_worker_exit(next(sentinels[s] for s in ready if s in sentinels))
            return
        started = executor.step_started
        if started is not None and time.monotonic() - started > executor.timeout_s:
            executor.fail(f"a tensor-parallel step made no progress within "
                          f"distributed_timeout_s={executor.timeout_s:g} s (a worker hung?)")
            return
        del executor


class MultiprocExecutor:
    def __init__(self, config: EngineConfig, timeout_s: float):
        from runner.engine.worker import worker_main

        self.world_size = config.parallel_config.tensor_parallel_size
        self.timeout_s = timeout_s
        fd, self.init_file = tempfile.mkstemp(prefix="runner-tp-", suffix=".rendezvous")
        os.close(fd)
        ctx = mp.get_context("spawn")
        self.procs: list = []
        self.conns: list = []
        self._status = {r: "starting" for r in range(1, self.world_size)}
        self._errors: dict[int, str] = {}
        self._lock = threading.Lock()
        self.failure: Optional[str] = None
        self.step_started: Optional[float] = None     # set by the driver around each step
        # shared with the finalizer and the monitor thread (neither may hold `self`)
        self._holder: dict = {"closing": False}
        wake_recv, wake_send = ctx.Pipe(duplex=False)
        self._holder["wake"] = wake_send
        for rank in range(1, self.world_size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, name=f"runner-tp-rank{rank}", daemon=True,
                            args=(rank, config, self.init_file, timeout_s, os.getpid(), child))
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self._finalizer = weakref.finalize(self, _cleanup, self.procs, self.conns, self._holder,
                                           self.init_file)
        self._monitor = threading.Thread(
            target=_watch, args=(weakref.ref(self), {p.sentinel: r for r, p in enumerate(
                self.procs, start=1)}, wake_recv, self._holder),
            daemon=True, name="tp-worker-monitor")
        self._monitor.start()
        self.channel = StepChannel(self.conns)

    # ------------------------------------------------------------------ status
    def _drain(self, rank: int) -> None:
        conn = self.conns[rank - 1]
        with self._lock:
            try:
                while conn.poll():
                    msg = conn.recv_bytes()
                    if msg.startswith(b"error:"):
                        self._errors[rank] = msg[6:].decode(errors="replace").strip()
                    else:
                        self._status[rank] = msg.decode()
            except (EOFError, OSError):
                pass

    def wait_for(self, state: str) -> None:
        """Block until every worker reports `state`; raise if one dies (at once) or start-up
        takes longer than distributed_timeout_s (at least 10 minutes: loading weights)."""
        limit = max(self.timeout_s, 600.0)
        deadline = time.monotonic() + limit
        while True:
            for rank in self._status:
                self._drain(rank)
            self.check()
            if all(s == state for s in self._status.values()):
                return
            if time.monotonic() > deadline:
                late = [r for r, s in self._status.items() if s != state]
                self.fail(f"tensor-parallel worker rank(s) {late} did not report {state!r} "
                          f"within {limit:g} s")
                self.check()
            time.sleep(0.01)

    def attach(self, tp: TensorParallelGroup, release_graphs=None) -> None:
        """The driver's process group: aborted on a worker's death, destroyed at shutdown,
        after `release_graphs` (the driver's CUDA graphs hold references NCCL waits on)."""
        self._holder["tp"] = tp
        if release_graphs is not None:
            self._holder["release_graphs"] = release_graphs

    def check(self) -> None:
        if self.failure is not None:
            raise WorkerFailure(self.failure)

    def fail(self, reason: str) -> None:
        """Record the first failure, stop every worker and unblock the driver's collectives."""
        with self._lock:
            if self.failure is not None:
                return
            self.failure = reason + ". The engine cannot continue; create a new one."
            self._holder["failed"] = True
        logger.error("%s", self.failure)
        for p in self.procs:
            if p.is_alive():
                p.kill()
        tp = self._holder.get("tp")
        if tp is not None:
            tp.abort()

    def explain(self, exc: BaseException) -> WorkerFailure:
        """The error to raise when a collective on the driver failed: the monitor's reason if a
        worker died (given a moment to notice), else the collective's own error."""
        deadline = time.monotonic() + 2.0
        while self.failure is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.failure is None:
            self.fail(f"a tensor-parallel collective failed or timed out (distributed_timeout_s="
                      f"{self.timeout_s:g}): {exc}")
        return WorkerFailure(self.failure)

    def on_worker_exit(self, rank: int) -> None:
        proc = self.procs[rank - 1]
        proc.join(timeout=1.0)
        self._drain(rank)
        error = self._errors.get(rank)
        reason = (f"tensor-parallel worker rank {rank} (pid {proc.pid}) exited with code "
                  f"{proc.exitcode}")
        if error:
            reason += f"; its error:\n{error}"
        elif self._status.get(rank) == "starting":
            reason += (" before it started (see its traceback above). Worker processes are "
                       "spawned and import the main module again: a script that creates the "
                       "LLM at module level must do so under `if __name__ == '__main__':`")
        self.fail(reason)

    # ---------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        self._finalizer()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]
