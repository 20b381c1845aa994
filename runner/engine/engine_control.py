"""Control of a built engine from LLM (vLLM 0.24's): collective_rpc / apply_model on the
workers, sleep / wake_up, start_profile / stop_profile.

    collective_rpc(method, timeout, args, kwargs) -> on every worker: getattr(worker, method)
      (a str) or method(worker, ...) (a callable) -> [one result per worker]
      (the generative engine's workers; a pooling model's PoolingRunner plays its one worker)
    apply_model(func) -> collective_rpc("apply_model", args=(func,)) -> [func(model)]
    sleep(level): 0 pauses scheduling; 1 moves the weights to host memory and frees the KV
      cache (and CUDA graphs); 2 discards the weights too (wake up "weights", reload them with
      collective_rpc("reload_weights"), then wake up "kv_cache")
    wake_up(tags): "weights" back to their devices, "kv_cache" reallocated (prefix cache
      forgotten: its blocks are gone) and CUDA graphs recaptured; scheduling resumes once both
      are back (a level-0 pause: with the "scheduling" tag)

sleep needs LLM(enable_sleep_mode=True), as in vLLM. While asleep, generate / chat / beam_search and the pooling methods raise RuntimeError.
Tensor parallelism (worker processes) is not reachable from here yet: collective_rpc, sleep
and profiling with tensor_parallel_size > 1 raise NotImplementedError.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Optional, Union

import torch

from runner.engine.profiler import TorchProfiler

SLEEP_TAGS = ("weights", "kv_cache", "scheduling")
SLEEP_MODES = ("abort", "wait", "keep")


def _tensors(model: torch.nn.Module):
    """(owner module, attribute name, tensor, is a parameter) of every parameter and buffer,
    each tensor once (a tied LM head shares the embedding's parameter)."""
    seen: set[int] = set()
    for module in model.modules():
        for is_param, table in ((True, module._parameters), (False, module._buffers)):
            for name, t in list(table.items()):
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    yield module, name, t, is_param


class EngineControl:
    def __init__(self, llm, profiler_config=None, enable_sleep_mode: bool = False):
        # a weak reference: the LLM owns this object, and a cycle would keep the engine (and its
        # KV cache) alive after the user's last reference until a full garbage collection
        self._llm = weakref.ref(llm)
        self.enable_sleep_mode = enable_sleep_mode
        engine = llm.llm_engine
        device = (engine.device_config.device if engine is not None
                  else llm.pooling_runner.device)
        self.profiler = TorchProfiler(profiler_config, device)
        self.asleep: set[str] = set()          # the tags that are asleep
        self.level: Optional[int] = None
        self._saved: list[tuple] = []          # (module, name, device, shape, dtype, host copy)

    @property
    def llm(self):
        return self._llm()

    # ---------------------------------------------------------------- workers
    def workers(self) -> list:
        engine = self.llm.llm_engine
        if engine is None:
            return [self.llm.pooling_runner]
        if engine.config.parallel_config.tensor_parallel_size > 1:
            raise NotImplementedError(
                "collective_rpc / apply_model / sleep / profiling with tensor_parallel_size > "
                "1 are not supported yet (the worker processes take steps only); use "
                "tensor_parallel_size=1.")
        return [engine.executor.driver_worker]

    def model(self) -> torch.nn.Module:
        engine = self.llm.llm_engine
        return (engine.executor.model_runner.model if engine is not None
                else self.llm.pooling_runner.model)

    def collective_rpc(self, method: Union[str, Callable], timeout: Optional[float] = None,
                       args: tuple = (), kwargs: Optional[dict] = None) -> list:
        kwargs = kwargs or {}
        results = []
        for worker in self.workers():
            if isinstance(method, str):
                fn = getattr(worker, method, None)
                if fn is None or not callable(fn):
                    raise AttributeError(f"the worker ({type(worker).__name__}) has no method "
                                         f"{method!r}.")
                call = lambda fn=fn: fn(*args, **kwargs)                    # noqa: E731
            elif callable(method):
                call = lambda w=worker: method(w, *args, **kwargs)        # noqa: E731
            else:
                raise TypeError(f"method must be a str or a callable, got "
                                f"{type(method).__name__}.")
            results.append(call() if timeout is None else _with_timeout(call, timeout))
        return results

    def apply_model(self, func: Callable[[torch.nn.Module], Any]) -> list:
        return self.collective_rpc(lambda worker: func(self.model()))

    # --------------------------------------------------------------- profiler
    def start_profile(self, profile_prefix: Optional[str] = None) -> None:
        self.workers()
        self.profiler.start(profile_prefix)

    def stop_profile(self) -> None:
        self.profiler.stop()

    # ------------------------------------------------------------------ sleep
    def check_awake(self, api: str) -> None:
        if self.asleep:
            raise RuntimeError(f"{api}() while the engine sleeps (level {self.level}, asleep: "
                               f"{sorted(self.asleep)}); call wake_up() first.")

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if not self.enable_sleep_mode:
            raise RuntimeError("Sleep mode is not enabled: build the LLM with "
                               "enable_sleep_mode=True to use sleep() / wake_up().")
        if level not in (0, 1, 2):
            raise ValueError(f"sleep level must be 0, 1 or 2, got {level!r}.")
        if mode not in SLEEP_MODES:
            raise ValueError(f"mode must be one of {list(SLEEP_MODES)}, got {mode!r}.")
        if self.asleep:
            raise RuntimeError("the engine is asleep already; call wake_up() first.")
        self.workers()
        engine = self.llm.llm_engine
        if engine is not None and engine.has_unfinished_requests():
            if mode != "abort":
                raise NotImplementedError(f"sleep(mode={mode!r}) with unfinished requests is "
                                          "not supported; use mode='abort'.")
            engine.abort_request(list(engine.requests))
            engine.take_held_outputs()
        self.level = level
        if level == 0:
            self.asleep = {"scheduling"}
            return
        self._offload_weights(discard=level == 2)
        self.asleep = {"weights", "scheduling"}
        if engine is not None:
            mr = engine.executor.model_runner
            mr.release_graphs()
            mr.kv_caches, mr.swap_caches = [], []
            self.asleep.add("kv_cache")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        tags = list(SLEEP_TAGS) if tags is None else list(tags)
        bad = [t for t in tags if t not in SLEEP_TAGS]
        if bad:
            raise ValueError(f"wake_up tags must be in {list(SLEEP_TAGS)}, got {bad}.")
        if "weights" in tags and "weights" in self.asleep:
            self._restore_weights()
            self.asleep.discard("weights")
        if "kv_cache" in tags and "kv_cache" in self.asleep:
            if "weights" in self.asleep:
                raise RuntimeError("wake up 'weights' before 'kv_cache' (the CUDA graphs are "
                                   "captured with the weights in place).")
            engine = self.llm.llm_engine
            mr = engine.executor.model_runner
            mr.initialize_kv_cache(mr.num_blocks, mr.num_cpu_blocks)
            engine.reset_prefix_cache()     # the cached blocks' contents are gone
            self.asleep.discard("kv_cache")
        # as vLLM 0.24: scheduling resumes by itself once every allocation is back (levels
        # 1 and 2); a level-0 pause ends with the "scheduling" tag (or tags=None)
        if self.asleep <= {"scheduling"} and ("scheduling" in tags or self.level != 0):
            self.asleep.discard("scheduling")
        if not self.asleep:
            self.level = None

    def is_sleeping(self) -> bool:
        return bool(self.asleep)

    def _offload_weights(self, discard: bool) -> None:
        pin = torch.cuda.is_available()
        self._saved = []
        for module, name, t, is_param in _tensors(self.model()):
            # level 2 discards the parameters (the checkpoint has them); buffers (rotary
            # tables, ...) are not in the checkpoint, so they go to host memory as in level 1
            drop = discard and is_param
            host = None
            if not drop:
                host = t.data if t.device.type == "cpu" else t.data.to(
                    "cpu", copy=True).pin_memory() if pin else t.data.cpu()
            self._saved.append((module, name, t.device, t.shape, t.dtype, host))
            if drop or t.device.type != "cpu":
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)

    def _restore_weights(self) -> None:
        for module, name, device, shape, dtype, host in self._saved:
            t = getattr(module, name)
            if host is None:       # level 2: room only; reload_weights fills it
                t.data = torch.empty(shape, dtype=dtype, device=device)
            elif host.device != device or t.numel() == 0:
                t.data = host.to(device, non_blocking=True) if host.device != device else host
        self._saved = []


def _with_timeout(call: Callable, timeout: float):
    box: dict = {}

    def run():
        try:
            box["result"] = call()
        except BaseException as exc:          # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"collective_rpc timed out after {timeout} s.")
    if "error" in box:
        raise box["error"]
    return box.get("result")
