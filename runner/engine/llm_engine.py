"""LLMEngine: requests in, one step at a time, RequestOutputs out (vLLM's LLMEngine API).

add_request() tokenizes and validates a prompt and queues a SequenceGroup in the scheduler.
step() is the loop of vLLM v1's owners:

    Scheduler.schedule() -> SchedulerOutput (plain data)
    -> Executor.execute_model(out, overlap) -> Worker -> ModelRunner: inputs, forward, sample
         `overlap` runs while the GPU computes: the previous step's output work
    -> Scheduler.on_step_launched(out)
    -> ModelRunnerOutput -> Scheduler.update_from_output(): append, stop checks, forks, frees
    -> OutputProcessor.process(): stop strings, text, logprob dicts, RequestOutputs

A finished request leaves the engine with its last RequestOutput (finished=True).

Async output processing (runner/engine/output_processor.py): a step's text and outputs are
made during the next step's forward pass, so step() returns the outputs of the step before it
and a final step() with nothing scheduled returns the last ones.

Async scheduling (runner/engine/scheduler.py): an `async_sample` step is left in flight, its
tokens unread (AsyncModelRunnerOutput); the next step() schedules and launches the next forward
pass, which takes them as input on the device, and only then reads them back and processes
them (update_from_output, outputs) while the GPU computes. Tokens are the same either way for
greedy and seeded requests; unseeded random requests share the sampler's generator, so a
different batch order (a sequence admitted a step later) can change theirs.

If a step raises, the outputs of the last good step stay available to take_held_outputs().

While requests are in the engine, the garbage collector skips what lived before each step
(runner/engine/gc_policy.py); the engine gives that back as soon as it has nothing left.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Optional, Union

from runner.engine.beam_search import BeamSearchState
from runner.engine.beam_search_vllm import VllmBeamSearchState
from runner.engine.block_manager import BlockManager
from runner.engine.config import EngineArgs, EngineConfig
from runner.engine.executor import Executor
from runner.engine.gc_policy import StepCollector
from runner.engine.output_processor import OutputProcessor
from runner.engine.outputs import RequestOutput
from runner.engine.sampling_params import BeamSearchParams, SamplingParams
from runner.engine.scheduler import Scheduler
from runner.engine.sequence import SequenceGroup
from runner.engine.stat_logger import StatLogger
from runner.engine.tokenizer import load_tokenizer, parse_prompt

logger = logging.getLogger("runner.engine")

PromptType = Union[str, dict, list]


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config = config.model_config
        self.scheduler_config = config.scheduler_config
        self.cache_config = config.cache_config
        self.device_config = config.device_config
        self.tokenizer = None if self.model_config.skip_tokenizer_init else load_tokenizer(
            self.model_config)
        # every EOS id the model lists stops a sequence; the first is the primary one (a stop
        # with stop_reason None), the others stop as vLLM's generation_config stop ids do
        self.eos_token_ids = self._eos_token_ids()
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        self.executor = Executor(config, self.eos_token_ids)
        num_blocks, num_cpu_blocks = self.executor.num_blocks, self.executor.num_cpu_blocks
        config.cache_config.num_gpu_blocks = num_blocks
        config.cache_config.num_cpu_blocks = num_cpu_blocks
        bs = self.cache_config.block_size
        self.block_manager = BlockManager(num_blocks, bs, self.cache_config.enable_prefix_caching)
        # the swap space's books (preemption by swap: groups of several sequences)
        self.cpu_block_manager = BlockManager(num_cpu_blocks, bs, enable_caching=False) \
            if num_cpu_blocks > 0 else None
        self.async_scheduling = config.async_scheduling
        self.async_output_proc = not config.disable_async_output_proc
        self.scheduler = Scheduler(self.scheduler_config, self.block_manager,
                                   self.eos_token_ids, self.async_scheduling,
                                   self.cpu_block_manager)
        self.output_processor = OutputProcessor(self.tokenizer, self.scheduler,
                                                self.async_output_proc)
        self.requests: dict[str, SequenceGroup] = {}
        self.stats = {"num_steps": 0, "num_async_steps": 0}
        # wall time per phase of step(), to tell CPU-bound steps from GPU-bound ones; the
        # output work that runs while the GPU computes is left out of execute_s
        self.step_times = {"schedule_s": 0.0, "execute_s": 0.0, "process_s": 0.0}
        self._inflight = None          # async scheduling: (SchedulerOutput, unread results)
        self._so_manager = None        # structured outputs (runner/engine/structured_output.py)
        self._in_output_work = False
        self._collector = StepCollector()
        # disable_log_stats=False: a stats line in the log every few seconds (vLLM's)
        self.stat_logger = StatLogger(self.scheduler, self.block_manager) \
            if config.log_stats else None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args.create_configs())

    def _eos_token_ids(self) -> tuple[int, ...]:
        """config.json's and generation_config.json's EOS ids, else the tokenizer's."""
        ids = self.model_config.eos_token_ids()
        if not ids and self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids = [self.tokenizer.eos_token_id]
        return tuple(ids)

    @property
    def stream_outputs(self) -> bool:
        """step() returns every progressed request's output (vLLM's default); LLM.generate
        turns this off and takes finished ones only."""
        return self.output_processor.stream_outputs

    @stream_outputs.setter
    def stream_outputs(self, value: bool) -> None:
        self.output_processor.stream_outputs = value

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes (also done when the engine is garbage
        collected or the interpreter exits)."""
        self._collector.idle()
        self.executor.shutdown()

    def get_tokenizer(self):
        return self.tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        """Tokenize prompts and decode outputs (text, Logprob.decoded_token) with `tokenizer`
        from now on; between requests (running ones keep their detokenizers)."""
        self.tokenizer = tokenizer
        self.output_processor.set_tokenizer(tokenizer)

    # ------------------------------------------------------------------ requests
    def _tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        return parse_prompt(prompt, self.tokenizer, self.model_config.hf_config.vocab_size)

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                    arrival_time: Optional[float] = None, lora_request=None,
                    beam_params: Optional[BeamSearchParams] = None) -> None:
        """Queue one request. `beam_params` (from LLM.beam_search) runs it as a beam search;
        so does params.use_beam_search=True (the legacy form: best_of beams, n returned).
        `lora_request` (a LoRARequest) runs it with that adapter, loaded here on first use."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}.")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in the engine.")
        if (params.use_beam_search or beam_params is not None) and params.stop:
            raise ValueError("stop strings are not supported with beam search; use "
                             "stop_token_ids or max_tokens.")
        params = self._check_params(params)
        if params.detokenize is False and params.stop:
            raise ValueError("stop strings need detokenize=True.")
        text, ids = self._tokenize(prompt)
        if params.truncate_prompt_tokens is not None:
            ids = ids[-params.truncate_prompt_tokens:]
        if not ids:
            raise ValueError("the prompt is empty (0 tokens); give at least one token.")
        max_len = self.scheduler_config.max_model_len
        if len(ids) >= max_len:
            raise ValueError(f"prompt of request {request_id!r} has {len(ids)} tokens, more than "
                             f"max_model_len={max_len} allows (it needs room for at least one "
                             "generated token); shorten it or raise max_model_len.")
        self._check_lora_request(lora_request)
        group = SequenceGroup(request_id, text, ids, params, arrival_time)
        group.set_lora_request(lora_request)
        if params.structured_outputs is not None:
            group.grammar = self._structured_outputs().compile(params.structured_outputs)
            group.grammar_vocab_size = self.model_config.hf_config.vocab_size
        if params.use_beam_search or beam_params is not None:
            self._init_beam(group, params, beam_params, max_len - len(ids))
        self.scheduler.add_seq_group(group)
        self.requests[request_id] = group

    def _structured_outputs(self):
        """The structured-output grammar compiler, made on the first request that needs it."""
        if self._so_manager is None:
            from runner.engine.structured_output import StructuredOutputManager
            self._so_manager = StructuredOutputManager(
                self.tokenizer, self.model_config.hf_config.vocab_size, self.eos_token_ids)
        return self._so_manager

    def _check_params(self, params: SamplingParams) -> SamplingParams:
        """The checks that need the model (vLLM's SamplingParams.verify): logprobs within
        max_logprobs (-1: the whole vocabulary, resolved on a copy), token ids within the
        vocabulary, bad_words tokenized."""
        vocab_size = self.model_config.hf_config.vocab_size
        max_logprobs = self.model_config.max_logprobs
        limit = vocab_size if max_logprobs == -1 else max_logprobs
        resolved = {}
        for name in ("logprobs", "prompt_logprobs"):
            val = getattr(params, name)
            num = vocab_size if val == -1 else val
            if num is not None and num > limit:
                raise ValueError(f"{name}={val} asks for {num} logprobs, more than "
                                 f"max_logprobs={max_logprobs} allows; lower it or raise the "
                                 "engine's max_logprobs (-1: the whole vocabulary).")
            if val == -1:
                resolved[name] = vocab_size
        params.check_for_model(vocab_size, self.tokenizer)
        if resolved:
            params = params.clone()
            for name, num in resolved.items():
                setattr(params, name, num)
        return params

    def _check_lora_request(self, lora_request) -> None:
        """A LoRARequest needs enable_lora; its adapter is loaded and checked now (lazily:
        once per adapter, then from the host cache), so a bad folder fails at add_request."""
        if lora_request is None:
            return
        from runner.engine.lora.request import LoRARequest
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest (runner.engine.lora.request), "
                             f"got {type(lora_request).__name__}.")
        manager = self.executor.model_runner.lora_manager
        if manager is None:
            raise ValueError(f"lora_request {lora_request.lora_name!r} was given but LoRA is "
                             "off; build the engine with enable_lora=True (LLM(model, "
                             "enable_lora=True, max_lora_rank=...)).")
        manager.get_adapter(lora_request)

    def _init_beam(self, group: SequenceGroup, params: SamplingParams,
                   beam_params: Optional[BeamSearchParams], room: int) -> None:
        if beam_params is not None:
            # LLM.beam_search: vLLM 0.24's algorithm (runner/engine/beam_search_vllm.py)
            group.beam_temperature = beam_params.temperature
            eos = None
            if not beam_params.ignore_eos:
                # vLLM's: the tokenizer's EOS token completes a beam
                eos = (self.tokenizer.eos_token_id if self.tokenizer is not None
                       and self.tokenizer.eos_token_id is not None else self.eos_token_id)
            group.beam = VllmBeamSearchState(
                beam_width=beam_params.beam_width, length_penalty=beam_params.length_penalty,
                max_tokens=min(beam_params.max_tokens, room), eos_token_id=eos,
                prompt_len=len(group.prompt_token_ids))
            group.num_seqs = beam_params.beam_width
            return
        else:
            width, lp, es = params.best_of, params.length_penalty, params.early_stopping
            max_tokens, ignore_eos = params.max_tokens, params.ignore_eos
        eos = [] if ignore_eos else list(self.eos_token_ids)
        eos += [t for t in (params.stop_token_ids or []) if t not in eos]
        group.beam = BeamSearchState(
            beam_width=width, length_penalty=lp, early_stopping=es,
            max_tokens=min(max_tokens or room, room), eos_token_ids=eos)
        group.num_seqs = width

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            group = self.requests.pop(rid, None)
            if group is not None:
                self.scheduler.abort_seq_group(group)
        self.output_processor.abort(ids)       # an aborted request gets no more outputs
        self._idle_if_empty()

    def has_unfinished_requests(self) -> bool:
        """Requests still running, or outputs not yet handed out by step()."""
        return (bool(self.requests) or self.output_processor.has_pending
                or self._inflight is not None)

    def _idle_if_empty(self) -> None:
        if not self.has_unfinished_requests():
            self._collector.idle()           # runner/engine/gc_policy.py

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        self._collector.before_step()
        try:
            outputs = self._step()
            if self.stat_logger is not None:
                self.stat_logger.maybe_log()
            self._idle_if_empty()
            return outputs
        except BaseException:
            # the last good step's outputs stay available to take_held_outputs(): requests
            # that finished there are finished work, whatever broke afterwards
            if not self._in_output_work:
                try:
                    if self._inflight is not None:
                        self._resolve()
                    self.output_processor.run_deferred()
                except Exception:
                    logger.exception("processing the last step's outputs failed too")
            self._in_output_work = False
            self.output_processor.drop_deferred()
            self._inflight = None
            self._idle_if_empty()
            raise

    def take_held_outputs(self) -> list[RequestOutput]:
        """After step() raised: the outputs it had not handed out yet (async output processing
        holds a step's outputs back by one step), so a caller can keep the requests that did
        finish. Clears them."""
        return self.output_processor.take_ready()

    def _step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        op = self.output_processor
        out = self.scheduler.schedule()
        if out.is_empty:
            # nothing to run: hand out what the last step left
            if self._inflight is not None:
                self._resolve()
            op.run_deferred()
            self.step_times["process_s"] += time.perf_counter() - t0
            return op.take_ready()
        t1 = time.perf_counter()
        before = op.output_proc_s
        # the last step's output work runs while the GPU computes this one
        overlap = self._resolve if self._inflight is not None else op.run_deferred
        result = self.executor.execute_model(out, overlap)
        op.run_deferred()        # in case the executor had no forward pass to hide it behind
        self.scheduler.on_step_launched(out)
        self.stats["num_steps"] += 1
        if out.async_sample:
            self._inflight = (out, result)
            self.stats["num_async_steps"] += 1
            t2 = time.perf_counter()
        else:
            t2 = time.perf_counter()
            self._process(out, result)
        self.step_times["schedule_s"] += t1 - t0
        self.step_times["execute_s"] += t2 - t1 - (op.output_proc_s - before)
        self.step_times["process_s"] += time.perf_counter() - t2
        return op.take_ready()

    def _resolve(self) -> set[int]:
        """Read back the step left in flight and process its tokens (async scheduling); its
        output work runs at once, behind the forward pass of the step after it."""
        (out, pending), self._inflight = self._inflight, None
        self._in_output_work = True         # a failure from here is not retried by step()
        try:
            runner_out = pending.get_output()
            ended = self._process(out, runner_out)
            self.output_processor.run_deferred()
        finally:
            self._in_output_work = False
        return ended

    def _process(self, out, runner_out) -> set[int]:
        """A step's results -> the scheduler's books -> outputs. Returns the ids of the
        sequences that ended."""
        groups = self.scheduler.update_from_output(out, runner_out)
        self.output_processor.process(groups)
        ended = set()
        now = time.time()
        for group in groups:
            ended.update(s.seq_id for s in group.seqs if s.is_finished())
            if group.is_finished():
                group.metrics.finished_time = now
                self.requests.pop(group.request_id, None)
        return ended

    # ---------------------------------------------------------------------- stats
    def get_stats(self) -> dict:
        bs = self.cache_config.block_size
        mr, sched = self.executor.model_runner, self.scheduler
        t = mr.times
        return {
            **self.stats,
            "num_prompt_tokens": sched.num_prompt_tokens,
            "num_generation_tokens": sched.num_generation_tokens,
            "num_preemptions": sched.num_preemptions,
            "num_swapped_out": sched.num_swapped_out, "num_swapped_in": sched.num_swapped_in,
            "num_cpu_blocks": self.cache_config.num_cpu_blocks,
            "num_gpu_blocks": mr.num_blocks,
            "block_size": bs,
            "kv_cache_token_capacity": mr.num_blocks * bs,
            "kv_cache_bytes": mr.num_blocks * mr.block_bytes,
            "kv_cache_dtype": self.cache_config.kv_cache_dtype,
            "model_load_seconds": round(mr.load_seconds, 3),
            "device": str(self.device_config.device),
            "dtype": str(self.model_config.dtype).replace("torch.", ""),
            "kernel_backend": self.config.kernel_backend,
            **{k: round(v, 3) for k, v in self.step_times.items()},
            "output_proc_s": round(self.output_processor.output_proc_s, 3),
            # prepare_s: host input building and host-to-device copies; forward_s: launching
            # the forward (asynchronous on CUDA); sample_s: logits + sampler, which waits for
            # the GPU when it reads tokens back
            "prepare_s": round(t["stage_s"] + t["prepare_s"], 3),
            "forward_s": round(t["forward_s"], 3), "sample_s": round(t["sample_s"], 3),
            "cuda_graph_steps": mr.num_graph_steps,
            "custom_all_reduce": self.executor.custom_all_reduce,
            "async_scheduling": self.async_scheduling,
            "enable_prefix_caching": self.cache_config.enable_prefix_caching,
            **sched.prefix_cache_stats,
            "prefix_cache_blocks": self.block_manager.num_cached_blocks,
        }

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (vLLM's): only when no request holds KV blocks; returns
        whether it was done."""
        if self.has_unfinished_requests():
            return False
        return self.scheduler.reset_prefix_cache()
