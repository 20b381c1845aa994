"""AsyncLLMEngine: one background thread owns the (not thread-safe) LLMEngine; asyncio handlers
talk to it through queues. This is the server's continuous batching.

    handler (event loop)                       engine thread
    add_request(...) --- inbox (SimpleQueue) --> add_request on the LLMEngine (ValueError back
         await accepted <--------------------- -- to the handler through its future)
    async for out in stream  <- per-request    <- step(): a RequestOutput for every request that
         asyncio.Queue (call_soon_threadsafe)       progressed; finished=True ends the stream
    stream.abort() / disconnect -- inbox ------> abort_request (frees its sequences and blocks)

Requests that arrive while others decode are picked up before the next step, so they join the
running batch. Each streamed RequestOutput holds the text so far, so a slow reader can skip to
the newest one. The thread also keeps the numbers /metrics reports (counters, a gauge snapshot
taken after each step, the engine's get_stats() a few times a second), so the HTTP side never
reads engine state directly.

Failures: a ValueError from add_request is the client's (400); anything else raised by
add_request, or by a step, fails only the requests concerned with EngineRequestError (500,
naming the request id) and the thread goes on; /health turns red only when the thread is gone
or several steps in a row have failed. `fail_pending` (SIGTERM past the grace period) ends
every request still in the engine with EngineShutdownError (503).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

logger = logging.getLogger("runner.serve")

_IDLE_WAIT_S = 0.5  # how long the idle engine thread blocks on its inbox between checks
_STATS_EVERY_S = 0.25  # get_stats() at most this often (it may walk engine books)
_UNHEALTHY_AFTER = 3  # consecutive failed steps after which /health reports 503


class EngineShutdownError(RuntimeError):
    """The engine is stopping (SIGTERM) or stopped; the request was refused or cut short."""


class EngineOverloadedError(RuntimeError):
    """More requests are pending than serve.max_pending_requests allows."""


class EngineRequestError(RuntimeError):
    """The engine failed while serving this request (not the client's fault): a 500."""

    def __init__(self, request_id: str, cause: BaseException):
        super().__init__(f"the engine failed on request {request_id}: "
                         f"{type(cause).__name__}: {cause}")
        self.request_id = request_id


class RequestStream:
    """The outputs of one request, delivered from the engine thread to one asyncio consumer."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop,
                 engine: "AsyncLLMEngine"):
        self.request_id = request_id
        self._loop = loop
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self.finished = False

    # engine thread side
    def put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    # event loop side
    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        # Streamed outputs are cumulative: a reader that fell behind jumps to the newest one.
        while not isinstance(item, BaseException) and not item.finished:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def abort(self) -> None:
        """Stop generating (client gone): frees the request's sequences in the engine."""
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)


@dataclass
class _Add:
    request_id: str
    prompt: Any  # {"prompt_token_ids": [...], "prompt": text?}: tokenized by the server
    params: Any
    stream: RequestStream
    accepted: asyncio.Future
    arrival_time: float
    lora_request: Any = None   # a served LoRA adapter (serve.lora_modules)


@dataclass
class _Call:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future


@dataclass
class EngineCounters:
    """Monotonic counters (engine thread writes, /metrics reads)."""

    requests_added: int = 0
    requests_finished: dict = field(default_factory=dict)  # finish_reason -> count
    requests_aborted: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_failed: int = 0  # engine failures (500s)
    step_failures: int = 0


class AsyncLLMEngine:
    """Drives `llm.llm_engine` from one thread; `add_request` is the asyncio entry point."""

    def __init__(self, llm: Any, max_pending_requests: Optional[int] = None):
        self.llm = llm
        self.engine = llm.llm_engine  # None for an embedding model (LLM.encode only)
        if self.engine is not None:
            self.engine.stream_outputs = True
        self.max_pending_requests = max_pending_requests
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}  # engine thread only
        self._ids = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._accepting = False
        self._stop = threading.Event()
        self.counters = EngineCounters()
        self.gauges: dict = {}
        self.stats: dict = {}  # the engine's get_stats(), refreshed by the engine thread
        self._stats_at = 0.0
        self.error: Optional[BaseException] = None  # the last step failure
        self._failed_in_a_row = 0
        self._snapshot()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def healthy(self) -> bool:
        return self.is_running and self._failed_in_a_row < _UNHEALTHY_AFTER

    def fail_pending(self, reason: str) -> None:
        """Refuse new requests and end every request in the engine with EngineShutdownError
        (the grace period of a SIGTERM is over)."""
        self._accepting = False
        self._inbox.put(("fail_all", reason))

    def stop_accepting(self) -> None:
        """New requests get EngineShutdownError; those in flight go on."""
        self._accepting = False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort whatever is still running, stop the thread and wait for it."""
        self._accepting = False
        self._stop.set()
        self._inbox.put(None)  # wake the idle thread
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the engine thread did not stop within %.1fs", timeout)

    # ------------------------------------------------------------ asyncio side
    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def add_request(self, request_id: str, prompt: Any, params: Any,
                          lora_request: Any = None) -> RequestStream:
        """Queue a request; raises ValueError (bad input), EngineRequestError,
        EngineShutdownError or EngineOverloadedError before any output is produced."""
        if not self._accepting or not self.is_running:
            raise EngineShutdownError("the server is shutting down; request refused")
        if (self.max_pending_requests is not None
                and self.gauges.get("num_requests_waiting", 0) >= self.max_pending_requests):
            raise EngineOverloadedError(
                f"{self.gauges['num_requests_waiting']} requests are already waiting "
                f"(serve.max_pending_requests={self.max_pending_requests}); retry later")
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id, loop, self)
        accepted = loop.create_future()
        self._inbox.put(_Add(request_id, prompt, params, stream, accepted, time.time(),
                             lora_request))
        try:
            await accepted
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        return stream

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    async def run_in_engine_thread(self, fn: Callable[[], Any]) -> Any:
        """Run fn() in the engine thread between two steps (e.g. LLM.encode); its result or
        exception comes back here."""
        if not self._accepting or not self.is_running:
            raise EngineShutdownError("the server is shutting down; request refused")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._inbox.put(_Call(fn, loop, done))
        return await done

    # ------------------------------------------------------------ engine thread
    @staticmethod
    def _resolve(fut: asyncio.Future, loop, result=None, exc: Optional[BaseException] = None):
        def set_it():
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        try:
            loop.call_soon_threadsafe(set_it)
        except RuntimeError:
            pass

    def _handle(self, cmd: Any) -> None:
        if isinstance(cmd, _Add):
            loop = cmd.stream._loop
            try:
                if not self._accepting:
                    raise EngineShutdownError("the server is shutting down; request refused")
                self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params,
                                        arrival_time=cmd.arrival_time,
                                        **({} if cmd.lora_request is None
                                           else {"lora_request": cmd.lora_request}))
            except (ValueError, NotImplementedError, EngineShutdownError) as exc:
                self._resolve(cmd.accepted, loop, exc=exc)  # the handler answers 400 / 503
                return
            except Exception as exc:
                logger.exception("add_request failed for %s", cmd.request_id)
                self.counters.requests_failed += 1
                with_id = EngineRequestError(cmd.request_id, exc)
                self._resolve(cmd.accepted, loop, exc=with_id)
                self._abort_quietly([cmd.request_id])
                return
            self._streams[cmd.request_id] = cmd.stream
            self.counters.requests_added += 1
            self._resolve(cmd.accepted, loop, result=True)
        elif isinstance(cmd, _Call):
            try:
                result = cmd.fn()
            except Exception as exc:
                self._resolve(cmd.done, cmd.loop, exc=exc)
            else:
                self._resolve(cmd.done, cmd.loop, result=result)
        elif isinstance(cmd, tuple) and cmd[0] == "abort":
            rid = cmd[1]
            if self._streams.pop(rid, None) is not None:
                self.engine.abort_request(rid)
                self.counters.requests_aborted += 1
        elif isinstance(cmd, tuple) and cmd[0] == "fail_all":
            self._fail_all(lambda rid: EngineShutdownError(cmd[1]))

    def _abort_quietly(self, rids: list) -> None:
        try:
            if self.engine is not None and rids:
                self.engine.abort_request(rids)
        except Exception:  # the engine is already broken; nothing more to free
            logger.exception("abort after an engine error failed")

    def _drain(self, block: bool) -> None:
        try:
            cmd = self._inbox.get(timeout=_IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if cmd is not None:
                self._handle(cmd)
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _step(self) -> None:
        outputs = self.engine.step()
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if out.finished:
                self._streams.pop(out.request_id, None)
                self._count_finished(out)
            if stream is not None:
                stream.put(out)

    def _count_finished(self, out: Any) -> None:
        c = self.counters
        c.prompt_tokens += len(out.prompt_token_ids or [])
        for comp in out.outputs:
            c.generation_tokens += len(comp.token_ids)
            reason = comp.finish_reason or "unknown"
            c.requests_finished[reason] = c.requests_finished.get(reason, 0) + 1

    def _fail_all(self, make_exc: Callable[[str], BaseException]) -> None:
        """End every request in the engine with make_exc(request_id) and free it."""
        for rid, stream in list(self._streams.items()):
            stream.put(make_exc(rid))
        rids = list(self._streams)
        self._streams.clear()
        self._abort_quietly(rids)

    def _snapshot(self) -> None:
        e = self.engine
        try:
            bm = e.block_manager
            num_blocks = bm.num_blocks
            used = num_blocks - bm.num_free_blocks
            self.gauges = {
                "num_requests_running": len(e.scheduler.running),
                "num_requests_waiting": len(e.scheduler.waiting),
                "num_unfinished_requests": len(self._streams),
                "kv_cache_usage_perc": used / num_blocks if num_blocks else 0.0,
                "kv_cache_used_blocks": used,
                "kv_cache_total_blocks": num_blocks,
                "num_preemptions": getattr(e.scheduler, "num_preemptions", 0),
                "num_steps": e.stats.get("num_steps", 0) if hasattr(e, "stats") else 0,
            }
        except AttributeError:  # an engine without these books (tests' fakes, remote)
            self.gauges = {"num_unfinished_requests": len(self._streams)}
        now = time.monotonic()
        if e is not None and now - self._stats_at >= _STATS_EVERY_S:
            self._stats_at = now
            try:
                self.stats = dict(e.get_stats())
            except Exception:  # stats are for /metrics only; never fail a step over them
                self.stats = {}

    def _has_work(self) -> bool:
        return self.engine is not None and self.engine.has_unfinished_requests()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain(block=not self._has_work())
                if self._stop.is_set():
                    break
                if self._has_work():
                    try:
                        self._step()
                        self._failed_in_a_row = 0
                    except Exception as exc:
                        logger.exception("engine step failed; failing the running requests")
                        self.error = exc
                        self._failed_in_a_row += 1
                        self.counters.step_failures += 1
                        self.counters.requests_failed += len(self._streams)
                        self._fail_all(lambda rid, cause=exc: EngineRequestError(rid, cause))
                self._snapshot()
        finally:
            self._fail_all(lambda rid: EngineShutdownError(
                "the server shut down before the request finished"))
            # commands that raced the stop: refuse them cleanly
            while True:
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(cmd, _Add):
                    self._resolve(cmd.accepted, cmd.stream._loop,
                                  exc=EngineShutdownError("the server is shutting down"))
                elif isinstance(cmd, _Call):
                    self._resolve(cmd.done, cmd.loop,
                                  exc=EngineShutdownError("the server is shutting down"))
            self._snapshot()
            logger.info("engine loop stopped")
