"""The executor: runs each step on the Worker(s) (vLLM's owner of the workers).

    Executor.execute_model(SchedulerOutput, overlap) -> ModelRunnerOutput
                                                     | AsyncModelRunnerOutput (.get_output())

With tensor_parallel_size=1 it owns one Worker in this process; with N > 1 the driver's Worker
(rank 0) in this process and N-1 worker processes (`WorkerProcesses`). A step: the driver's
ModelRunner stages the inputs and launches the forward pass, the executor sending the staged
arrays to the other ranks first; then `overlap`, CPU work of the engine's that hides behind the
GPU's (the previous step's output processing); then the sample. An `async_sample` step is
sampled on the device and returned unread, as an AsyncModelRunnerOutput that the engine reads
after launching the next step. An error of `overlap` is its own, not a worker failure: it is
raised as it was once the step's collectives are done.

Worker processes: the driver spawns one process per other rank (`spawn`, as CUDA needs), each
with a duplex pipe: steps go down it (distributed.StepChannel), and status comes up it ("alive"
once imports are done, "ready" once its Worker is built, or the traceback of the exception that
killed it). A monitor thread waits on the processes' sentinels: when a worker dies it records
why, kills the others and aborts the device group, so the driver's pending collective fails at
once instead of hanging, and the engine raises a WorkerFailure that names the rank, its exit
code and its traceback. A worker that hangs makes the driver's collectives time out after
`distributed_timeout_s`. Workers leave when the driver says so, when their pipe reaches
end-of-file, or when their parent process is gone: no orphans.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import tempfile
import threading
import time
import weakref
from typing import Callable, Optional

from runner.engine.config import EngineConfig
from runner.engine.distributed import (EXECUTE, SHUTDOWN, StepChannel, TensorParallelGroup,
                                       init_tensor_parallel)
from runner.engine.model_runner import StepLostError
from runner.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput

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


class WorkerProcesses:
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


class AsyncModelRunnerOutput:
    """An async_sample step's results, still on the device: `get_output()` waits for them."""

    def __init__(self, executor: "Executor", pending):
        self._executor = executor
        self._pending = pending

    def get_output(self) -> ModelRunnerOutput:
        with self._executor.guard():
            return self._executor.model_runner.finish(self._pending)


class Executor:
    def __init__(self, config: EngineConfig, eos_token_ids: tuple = ()):
        from runner.engine.worker import Worker, rank_device

        self.procs: Optional[WorkerProcesses] = None
        tp_size = config.parallel_config.tensor_parallel_size
        if tp_size > 1:
            timeout = config.parallel_config.distributed_timeout_s
            procs = self.procs = WorkerProcesses(config, timeout)
            try:
                procs.wait_for("alive")
                tp = init_tensor_parallel(0, tp_size, procs.init_file, rank_device(config, 0),
                                          procs.timeout_s)
                procs.attach(tp)
                self.driver_worker = Worker(config, 0, tp, eos_token_ids)
                procs.attach(tp, release_graphs=self.driver_worker.model_runner.release_graphs)
                procs.wait_for("ready")
            except WorkerFailure:
                procs.shutdown()
                raise
            except Exception as exc:
                err = procs.explain(exc) if procs.failure is None or \
                    isinstance(exc, RuntimeError) else WorkerFailure(procs.failure)
                procs.shutdown()
                raise err from exc
            logger.info("tensor parallel: %d ranks (%s)", tp_size, tp.backend)
        else:
            self.driver_worker = Worker(config, eos_token_ids=eos_token_ids)
        self.model_runner = self.driver_worker.model_runner
        self.num_blocks = self.driver_worker.num_blocks
        self.num_cpu_blocks = self.driver_worker.num_cpu_blocks
        self._overlap_error: Optional[BaseException] = None

    @property
    def failure(self) -> Optional[str]:
        return None if self.procs is None else self.procs.failure

    @property
    def pids(self) -> list[int]:
        return [] if self.procs is None else self.procs.pids

    @property
    def custom_all_reduce(self) -> bool:
        """Whether small all-reduces take the custom one-shot path (tensor parallel GPUs)."""
        tp = self.driver_worker.tp
        return tp is not None and tp.custom_all_reduce is not None

    def shutdown(self) -> None:
        """Stop the worker processes (also done when the engine is garbage collected or the
        interpreter exits)."""
        if self.procs is not None:
            self.procs.shutdown()

    # -------------------------------------------------------------------- step
    def execute_model(self, out: SchedulerOutput, overlap: Optional[Callable] = None):
        """Run one step. `overlap()` runs once the forward pass is launched and before its
        results are read; it returns the ids of sequences it finished (no token is drawn for
        them)."""
        runner = self.model_runner
        with self.guard():
            launched = runner.launch(out, self._send if self.procs is not None else None)
        ended = self._overlap(overlap)
        with self.guard():
            if out.async_sample:
                result = AsyncModelRunnerOutput(self, runner.sample_async(launched, ended))
            else:
                result = runner.sample(launched, ended)
        if self._overlap_error is not None:
            exc, self._overlap_error = self._overlap_error, None
            raise exc
        return result

    def _send(self, step, staged) -> None:
        self.procs.channel.send(EXECUTE, step, staged)

    def _overlap(self, work: Optional[Callable]):
        """CPU work while the launched step computes; its error is kept for later (the step
        itself goes on: every rank is in it)."""
        self._overlap_error = None
        if work is None:
            return ()
        try:
            return work() or ()
        except Exception as exc:
            self._overlap_error = exc
            return ()

    @contextlib.contextmanager
    def guard(self):
        """Around every call that waits on the other ranks: a hung one fails the step after
        distributed_timeout_s; a failed collective is explained as the worker failure."""
        procs = self.procs
        if procs is None:
            yield
            return
        procs.check()
        procs.step_started = time.monotonic()
        try:
            yield
        except (WorkerFailure, StepLostError):
            raise
        except (RuntimeError, OSError) as exc:
            raise procs.explain(exc) from exc
        finally:
            procs.step_started = None
        # an aborted collective can return instead of raising: never hand on such a step
        procs.check()
