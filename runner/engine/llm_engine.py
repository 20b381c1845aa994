"""LLMEngine: requests in, one step at a time, RequestOutputs out (vLLM's LLMEngine API).

add_request() tokenizes and validates a prompt and queues a SequenceGroup. step() runs
    Scheduler.schedule() -> ModelRunner.launch() -> sample() -> Scheduler.update()
    -> append sampled tokens (fork n > 1 requests), check stop conditions
    -> free finished sequences
    -> detokenize, build logprob dicts, RequestOutput for every request that progressed
       (runner/engine/request_outputs.py).
A finished request leaves the engine with its last RequestOutput (finished=True).

Async output processing (vLLM's; on unless disable_async_output_proc): the last stage, the
step's text and outputs, runs during the next step, while the GPU computes its forward pass
(ModelRunner.execute_model's `overlap`), so step() returns the outputs of the step before it
and a final step() with nothing scheduled returns the last ones. What decides the next step
stays synchronous: tokens, EOS / stop-token / length checks, and the detokenization of requests
with stop strings (a stop string ends a request in the step that produced it). Outputs are the
same either way.

Async scheduling (vLLM's async_scheduling; on unless async_scheduling=False): a step whose
samples need no host work at once (no fork, beam or prompt logprobs) is left in flight: its
sampler is queued on the device and each sequence that sampled gets a placeholder token
(runner/engine/sequence.py). The next step() schedules and launches the next forward pass,
which reads those tokens on the device, and only then reads them back and processes them
(tokens, stop checks, outputs) while the GPU computes. The host's per-step work (scheduling,
input staging, graph launch, reading tokens, outputs) then hides behind the GPU's instead of
adding to it. A sequence that a token in flight ended has computed one more position, which
is dropped; one that its length limit ends is not scheduled again. Tokens are the same either
way for greedy and seeded requests; unseeded random requests share the sampler's generator, so
a different batch order (a sequence admitted a step later) can change theirs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import torch

from runner.engine.beam_search import BeamSearchState
from runner.engine.block_manager import BlockManager
from runner.engine.config import EngineArgs, EngineConfig
from runner.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from runner.engine.model_runner import (ModelRunner, ModelRunnerOutput, PendingSample,
                                        needs_fork)
from runner.engine.outputs import Logprob, RequestOutput
from runner.engine.request_outputs import RequestOutputBuilder
from runner.engine.sampler import SampledToken
from runner.engine.sampling_params import BeamSearchParams, SamplingParams
from runner.engine.scheduler import Scheduler, SchedulerOutput
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus
from runner.engine.tokenizer import load_tokenizer, parse_prompt

logger = logging.getLogger("runner.engine")

PromptType = Union[str, dict, list]


@dataclass
class _Deferred:
    """A step's output work left for the next step's forward pass to hide."""
    appends: list = field(default_factory=list)        # (Sequence, SampledToken) in order
    touched: list = field(default_factory=list)        # groups that progressed
    finished: set = field(default_factory=set)         # their request ids that finished
    aborted: set = field(default_factory=set)          # aborted since: no output for them


@dataclass
class _InFlight:
    """A step sampled on the device whose tokens are not read back yet (async scheduling)."""
    sched_out: SchedulerOutput
    pending: PendingSample


def seed_for(seed: int, index: int) -> int:
    """Distinct, reproducible seeds for the n sequences of one seeded request."""
    return (seed + index * 0x9E3779B97F4A7C15) % (1 << 63)


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
        self.output_builder = RequestOutputBuilder(self.tokenizer)
        self.model_runner = ModelRunner(config, self.eos_token_ids)
        self.block_manager = BlockManager(self.model_runner.num_blocks, self.cache_config.block_size,
                                          self.cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(self.scheduler_config, self.block_manager)
        self.requests: dict[str, SequenceGroup] = {}
        self._seq_counter = 0
        # step() returns outputs of every request that progressed (streaming, vLLM's default);
        # LLM.generate turns this off and gets only finished requests (vLLM's FINAL_ONLY)
        self.stream_outputs = True
        self.stats = {"num_prompt_tokens": 0, "num_generation_tokens": 0, "num_steps": 0}
        # wall time per phase of step(), to tell CPU-bound steps from GPU-bound ones.
        # output_proc_s: detokenization and RequestOutputs; with async output processing it
        # runs while the GPU computes the next forward pass (and is left out of execute_s),
        # without it, it is part of process_s
        self.step_times = {"schedule_s": 0.0, "execute_s": 0.0, "process_s": 0.0,
                           "output_proc_s": 0.0}
        self.async_output_proc = not config.disable_async_output_proc
        self.async_scheduling = config.async_scheduling
        self._inflight: Optional[_InFlight] = None   # async scheduling: the unread step
        self.stats["num_async_steps"] = 0
        self._deferred: Optional[_Deferred] = None   # the last step's unfinished output work
        self._ready: list[RequestOutput] = []        # its outputs, once that work ran
        self._in_deferred = False

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args.create_configs())

    def _eos_token_ids(self) -> tuple[int, ...]:
        """config.json's and generation_config.json's EOS ids, else the tokenizer's."""
        ids = self.model_config.eos_token_ids()
        if not ids and self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids = [self.tokenizer.eos_token_id]
        return tuple(ids)

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes (also done when the engine is garbage
        collected or the interpreter exits)."""
        self.model_runner.shutdown()

    def get_tokenizer(self):
        return self.tokenizer

    # ------------------------------------------------------------------ requests
    def _tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        return parse_prompt(prompt, self.tokenizer, self.model_config.hf_config.vocab_size)

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                    arrival_time: Optional[float] = None,
                    beam_params: Optional[BeamSearchParams] = None) -> None:
        """Queue one request. `beam_params` (from LLM.beam_search) runs it as a beam search;
        so does params.use_beam_search=True (the legacy form: best_of beams, n returned)."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}.")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in the engine.")
        if (params.use_beam_search or beam_params is not None) and params.stop:
            raise ValueError("stop strings are not supported with beam search; use "
                             "stop_token_ids or max_tokens.")
        max_logprobs = self.model_config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            val = getattr(params, name)
            if val is not None and val > max_logprobs:
                raise ValueError(f"{name}={val} exceeds max_logprobs={max_logprobs}; lower it "
                                 "or raise the engine's max_logprobs.")
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
        group = SequenceGroup(request_id, text, ids, params, arrival_time)
        if params.use_beam_search or beam_params is not None:
            self._init_beam(group, params, beam_params, max_len - len(ids))
        dev = self.device_config.device
        group.generators = [
            torch.Generator(device=dev).manual_seed(seed_for(params.seed, i))
            if params.seed is not None else None for i in range(group.num_seqs)]
        seq = Sequence(self._next_seq_id(), group, ids, 0, group.generators[0])
        self._attach_detokenizer(seq)
        group.seqs.append(seq)
        self.scheduler.add_seq_group(group)
        self.requests[request_id] = group

    def _init_beam(self, group: SequenceGroup, params: SamplingParams,
                   beam_params: Optional[BeamSearchParams], room: int) -> None:
        if beam_params is not None:
            width, lp, es = beam_params.beam_width, beam_params.length_penalty, False
            max_tokens, ignore_eos = beam_params.max_tokens, beam_params.ignore_eos
            group.beam_temperature = beam_params.temperature
            group.beam_include_eos = beam_params.include_stop_str_in_output
        else:
            width, lp, es = params.best_of, params.length_penalty, params.early_stopping
            max_tokens, ignore_eos = params.max_tokens, params.ignore_eos
        eos = [] if ignore_eos else list(self.eos_token_ids)
        eos += [t for t in (params.stop_token_ids or []) if t not in eos]
        group.beam = BeamSearchState(
            beam_width=width, length_penalty=lp, early_stopping=es,
            max_tokens=min(max_tokens or room, room), eos_token_ids=eos)
        group.num_seqs = width

    def _next_seq_id(self) -> int:
        self._seq_counter += 1
        return self._seq_counter

    def _attach_detokenizer(self, seq: Sequence) -> None:
        p = seq.sampling_params
        if self.tokenizer is not None and p.detokenize and seq.group.beam is None:
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, seq.prompt_token_ids, p.skip_special_tokens,
                p.spaces_between_special_tokens)

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            group = self.requests.pop(rid, None)
            if group is not None:
                self.scheduler.abort_seq_group(group)
        if self._deferred is not None:      # an aborted request gets no more outputs
            self._deferred.aborted.update(ids)
        if self._ready:
            gone = set(ids)
            self._ready = [o for o in self._ready if o.request_id not in gone]

    def has_unfinished_requests(self) -> bool:
        """Requests still running, or outputs not yet handed out by step()."""
        return (bool(self.requests) or self._deferred is not None or bool(self._ready)
                or self._inflight is not None)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        try:
            return self._step()
        except BaseException:
            # the last good step's outputs stay available to take_held_outputs(): requests
            # that finished there are finished work, whatever broke afterwards
            if (self._deferred is not None or self._inflight is not None) and \
                    not self._in_deferred:
                try:
                    if self._inflight is not None:
                        self._resolve(self._inflight)
                    self._run_deferred()
                except Exception:
                    logger.exception("processing the last step's outputs failed too")
            self._deferred = None
            self._inflight = None
            raise

    def take_held_outputs(self) -> list[RequestOutput]:
        """After step() raised: the outputs it had not handed out yet (async output processing
        holds a step's outputs back by one step), so a caller can keep the requests that did
        finish. Clears them."""
        return self._take_ready()

    def _step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        prev = self._inflight           # resolved (and cleared) by _resolve
        sched_out = self.scheduler.schedule()
        if sched_out.is_empty:
            # nothing to run: hand out what the last step left
            if prev is not None:
                self._resolve(prev)
            self._run_deferred()
            self.step_times["process_s"] += time.perf_counter() - t0
            return self._take_ready()
        now = time.time()
        for s in sched_out.scheduled:
            s.seq.group.maybe_set_first_scheduled(now)
        t1 = time.perf_counter()
        before = self.step_times["output_proc_s"]
        runner = self.model_runner
        launched = runner.launch(sched_out, prev.pending if prev is not None else None)
        # the last step's output work runs while the GPU computes this one
        if prev is not None:
            runner.overlap(lambda: self._resolve(prev))
        else:
            runner.overlap(self._run_deferred if self._deferred is not None else None)
        self._run_deferred()        # in case the runner had no forward pass to hide it behind
        self.stats["num_steps"] += 1
        self.stats["num_prompt_tokens"] += sum(
            s.num_new_tokens for s in sched_out.scheduled if s.start < s.seq.prompt_len)
        # the step counts as computed only once it sampled: after an error (the last step's
        # output work raises from here) its positions are computed again
        if self.async_scheduling and runner.can_sample_async(sched_out):
            pending = runner.sample_async(launched)
            self.scheduler.update(sched_out)
            self._add_placeholders(sched_out, pending)
            self._inflight = _InFlight(sched_out, pending)
            self.stats["num_async_steps"] += 1
            t2 = time.perf_counter()
        else:
            runner_out = runner.sample(launched)
            self.scheduler.update(sched_out)
            t2 = time.perf_counter()
            self._deferred = self._process_outputs(sched_out, runner_out)
            self.scheduler.free_finished()
            if not self.async_output_proc:
                self._run_deferred()
        self.step_times["schedule_s"] += t1 - t0
        self.step_times["execute_s"] += t2 - t1 - (self.step_times["output_proc_s"] - before)
        self.step_times["process_s"] += time.perf_counter() - t2
        return self._take_ready()

    def _add_placeholders(self, sched_out: SchedulerOutput, pending: PendingSample) -> None:
        """Each sequence sampled in the step left in flight gets a placeholder token."""
        max_len = self.scheduler_config.max_model_len
        scheduled = sched_out.scheduled
        for row, owner in enumerate(pending.owners):
            seq = scheduled[owner].seq
            max_tokens = seq.sampling_params.max_tokens
            limit = max_len if max_tokens is None else min(max_len, seq.prompt_len + max_tokens)
            seq.append_placeholder(row, limit)

    def _resolve(self, prev: _InFlight) -> None:
        """Read back the step left in flight and process its tokens, placeholders first
        (async scheduling). A sequence preempted meanwhile that its token ended leaves the
        waiting queue."""
        self._inflight = None
        self._in_deferred = True        # a failure here is not retried by step()
        try:
            runner_out = self.model_runner.finish(prev.pending)
        finally:
            self._in_deferred = False
        waiting = SequenceStatus.WAITING
        preempted = [s.seq for s in prev.sched_out.scheduled if s.seq.status == waiting]
        self._deferred = self._process_outputs(prev.sched_out, runner_out)
        ended = [q for q in preempted if q.is_finished()]
        if ended:
            self.scheduler.drop_waiting(ended)
        self.scheduler.free_finished()
        self._run_deferred()

    def _take_ready(self) -> list[RequestOutput]:
        ready, self._ready = self._ready, []
        return ready

    def _run_deferred(self) -> None:
        """The deferred half of a step's output processing: detokenize, logprob dicts,
        RequestOutputs. It reads the sequences as that step left them: it runs before the
        next step's tokens are appended."""
        d, self._deferred = self._deferred, None
        if d is None:
            return
        t = time.perf_counter()
        self._in_deferred = True
        try:
            for seq, tok in d.appends:
                self._append_text(seq, tok)
            for group in d.touched:
                rid = group.request_id
                finished = rid in d.finished
                if rid in d.aborted and not finished:
                    continue
                if finished or self.stream_outputs:
                    self._ready.append(self.output_builder.make_output(group, finished))
        finally:
            self._in_deferred = False
        self.step_times["output_proc_s"] += time.perf_counter() - t

    def _process_outputs(self, sched_out: SchedulerOutput,
                         runner_out: ModelRunnerOutput) -> "_Deferred":
        """The synchronous half: everything the next schedule depends on."""
        touched: dict[str, SequenceGroup] = {}
        deferred = _Deferred()
        now = time.time()
        beam_groups: dict[str, SequenceGroup] = {}
        for i, s in enumerate(sched_out.scheduled):
            seq, group = s.seq, s.seq.group
            if i in runner_out.prompt_logprobs:
                # eager: the next step's logit rows are chosen from how many there are
                self._add_prompt_logprobs(group, runner_out.prompt_logprobs[i], s)
            if i in runner_out.beam_candidates:
                seq.beam_candidates = runner_out.beam_candidates[i]
                beam_groups[group.request_id] = group
                continue
            tokens = runner_out.sampled.get(i)
            if not tokens or seq.is_finished():     # (aborted while its step was in flight)
                continue
            touched[group.request_id] = group
            if group.metrics.first_token_time is None:
                group.metrics.first_token_time = now
            group.metrics.last_token_time = now
            if needs_fork(seq):
                group.forked = True
                for idx, tok in enumerate(tokens[1:], start=1):
                    child = seq.fork(self._next_seq_id(), idx, group.generators[idx])
                    self._attach_detokenizer(child)
                    group.seqs.append(child)
                    self.scheduler.fork(seq, child)
                    self._append(child, tok, deferred)
            self._append(seq, tokens[0], deferred)
        for group in beam_groups.values():
            live = [q for q in group.seqs if not q.is_finished()]
            if all(q.beam_candidates is not None for q in live):
                self._beam_step(group, live, now)
                touched[group.request_id] = group
        deferred.touched = list(touched.values())
        for group in deferred.touched:
            if group.is_finished():
                group.metrics.finished_time = time.time()
                self.requests.pop(group.request_id, None)
                deferred.finished.add(group.request_id)
        return deferred

    # ---------------------------------------------------------------- beam search
    def _beam_step(self, group: SequenceGroup, live: list[Sequence], now: float) -> None:
        """Every live beam has its candidates: choose the next beams (forking the parents'
        blocks), record finished hypotheses, free the beams that died."""
        state = group.beam
        want_lps = group.sampling_params.logprobs
        cands = [list(zip(*q.beam_candidates)) for q in live]
        running = state.step([q.cumulative_logprob for q in live], cands,
                             live[0].num_output_tokens)
        if group.metrics.first_token_time is None:
            group.metrics.first_token_time = now
        group.metrics.last_token_time = now
        self.stats["num_generation_tokens"] += len(live)
        for hyp in state.finished:
            c = getattr(hyp, "_candidate", None)
            if c is None:
                continue
            parent = live[c.parent]
            hyp.token_ids = parent.output_token_ids + [c.token_id]
            if want_lps is not None:
                hyp.logprobs = parent.output_logprobs + [self._beam_logprobs(parent, c)]
            del hyp._candidate
        new_beams: list[Sequence] = []
        if not state.done:
            # first decide who continues each candidate: the parent itself for its best child,
            # a fork of the (still unchanged) parent for any further child
            assigned: list[tuple[Sequence, object]] = []
            used: set[int] = set()
            for c in running:
                parent = live[c.parent]
                if c.parent in used:
                    beam = parent.fork(self._next_seq_id(), 0, None)
                    self.scheduler.fork(parent, beam)
                else:
                    used.add(c.parent)
                    beam = parent
                assigned.append((beam, c))
            for beam, c in assigned:
                if want_lps is not None:
                    beam.output_logprobs.append(self._beam_logprobs(live[c.parent], c))
                beam.append_token(c.token_id, c.logprob)
                new_beams.append(beam)
            group.forked = True
        for q in live:
            q.beam_candidates = None
            if state.done or q not in new_beams:
                q.status = SequenceStatus.FINISHED_STOPPED      # freed by the scheduler
        if state.done:
            beams = [(q.output_token_ids, q.cumulative_logprob,
                      q.output_logprobs if want_lps is not None else None) for q in live]
            group.beam_results = state.final(beams, group.sampling_params.n)
            group.seqs = live
        else:
            for i, beam in enumerate(new_beams):
                beam.index = i
            group.seqs = new_beams

    def _beam_logprobs(self, parent: Sequence, c) -> dict[int, Logprob]:
        ids, lps = parent.beam_candidates
        k = parent.sampling_params.logprobs or 0
        rank = ids.index(c.token_id) + 1 if c.token_id in ids else None
        return self.output_builder.logprob_dict(c.token_id, c.logprob, rank,
                                                list(zip(ids[:k], lps[:k])))

    def _add_prompt_logprobs(self, group: SequenceGroup, entries: list, s) -> None:
        group.prompt_logprobs.extend(entries)       # raw; the output builder makes the dicts
        self.scheduler.store_prompt_logprobs(group)

    def _append(self, seq: Sequence, tok: SampledToken, deferred: "_Deferred") -> None:
        """Append a sampled token and check the stop conditions. The text and logprob dicts
        are deferred, except for a request with stop strings, whose text decides whether it
        stops."""
        if seq.pending_row is not None:
            seq.fill_placeholder(tok.token_id, tok.logprob)
        else:
            seq.append_token(tok.token_id, tok.logprob)
        self.stats["num_generation_tokens"] += 1
        if seq.sampling_params.stop and seq.detokenizer is not None:
            self._append_text(seq, tok, check_stop=True)
        else:
            self._check_stop(seq, tok.token_id, 0)
            deferred.appends.append((seq, tok))

    def _append_text(self, seq: Sequence, tok: SampledToken, check_stop: bool = False) -> None:
        p = seq.sampling_params
        if p.logprobs is not None:
            seq.output_logprobs.append(
                self.output_builder.logprob_dict(tok.token_id, tok.logprob, tok.rank,
                                                 tok.top_logprobs))
        new_chars = 0
        if seq.detokenizer is not None:
            new_text = seq.detokenizer.append([tok.token_id])
            new_chars = len(new_text)
            seq.output_text = seq.detokenizer.output_text
        if check_stop:
            self._check_stop(seq, tok.token_id, new_chars)
        # (deferred or not, this is the sequence's latest token: the next step's are appended
        # only after the deferred work ran)
        if (seq.is_finished() and seq.detokenizer is not None
                and not isinstance(seq.stop_reason, str)):
            # the sequence ends: emit bytes held back as an incomplete character
            seq.detokenizer.flush()
            seq.output_text = seq.detokenizer.output_text

    def _check_stop(self, seq: Sequence, token_id: int, new_chars: int) -> None:
        p = seq.sampling_params
        if seq.num_output_tokens >= p.min_tokens:
            if token_id in self.eos_token_ids and not p.ignore_eos:
                seq.status = SequenceStatus.FINISHED_STOPPED
                if token_id != self.eos_token_id:
                    seq.stop_reason = token_id
                return
            if p.stop_token_ids and token_id in p.stop_token_ids:
                seq.status = SequenceStatus.FINISHED_STOPPED
                seq.stop_reason = token_id
                return
            if p.stop and seq.detokenizer is not None:
                hit = find_stop_string(seq.output_text, new_chars, p.stop,
                                       p.include_stop_str_in_output)
                if hit is not None:
                    seq.stop_reason, cut = hit
                    seq.output_text = seq.output_text[:cut]
                    seq.status = SequenceStatus.FINISHED_STOPPED
                    return
        if p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
            seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
        elif seq.num_tokens >= self.scheduler_config.max_model_len:
            seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED

    def get_stats(self) -> dict:
        bs = self.cache_config.block_size
        return {
            **self.stats,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_gpu_blocks": self.model_runner.num_blocks,
            "block_size": bs,
            "kv_cache_token_capacity": self.model_runner.num_blocks * bs,
            "kv_cache_bytes": self.model_runner.num_blocks * self.model_runner.block_bytes,
            "kv_cache_dtype": self.cache_config.kv_cache_dtype,
            "model_load_seconds": round(self.model_runner.load_seconds, 3),
            "device": str(self.device_config.device),
            "dtype": str(self.model_config.dtype).replace("torch.", ""),
            "kernel_backend": self.config.kernel_backend,
            **{k: round(v, 3) for k, v in self.step_times.items()},
            **{k: round(v, 3) for k, v in self.model_runner.times.items()},
            "cuda_graph_steps": self.model_runner.num_graph_steps,
            "custom_all_reduce": self.model_runner.custom_all_reduce,
            "async_scheduling": self.async_scheduling,
            "enable_prefix_caching": self.cache_config.enable_prefix_caching,
            **self.scheduler.prefix_cache_stats,
            "prefix_cache_blocks": self.block_manager.num_cached_blocks,
        }

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (vLLM's): only when no request holds KV blocks; returns
        whether it was done."""
        if self.has_unfinished_requests():
            return False
        return self.scheduler.reset_prefix_cache()
