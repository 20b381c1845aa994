"""The model runner: runs one scheduled step on the Worker(s) and samples from the logits.

execute_model(SchedulerOutput) = launch + overlap + sample:
  1. stage inputs on the host: the scheduled tokens of every sequence flattened into one batch,
     their positions, the cache slot of each (slot_mapping), block tables, query/context
     lengths; and choose the rows that need logits (the last token of each sequence that
     samples, and prompt positions whose prompt_logprobs were asked for);
  2. with tensor_parallel_size > 1, send the staged step to the worker processes;
  3. Worker.execute (runner/engine/worker.py; every rank): copy-on-write block copies, inputs to
     the device, forward (eager, or a CUDA graph), logits of the chosen rows;
  4. while the GPU runs the forward: the engine's `overlap` callback (the previous step's
     output processing, vLLM's async output processing);
  5. the Sampler -> SampledToken per sampled row. A request with n > 1 samples its first token n
     times from the one prompt row, once per output sequence (the engine forks afterwards).

Async scheduling splits step 5: `sample_async` queues the sampler and a copy of its results to
pinned host memory and returns at once; the engine launches the next step, whose inputs take
the still-unread tokens from the device (placeholders, runner/engine/sequence.py), and only
then `finish` waits for them.
A worker that dies or hangs surfaces here as a WorkerFailure naming it (runner/engine/executor.py).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import numpy as np

from runner.engine.config import EngineConfig
from runner.engine.device_copy import numpy_to_device, to_device
from runner.engine.distributed import EXECUTE, StepInput, init_tensor_parallel
from runner.engine.executor import MultiprocExecutor, WorkerFailure
from runner.engine.sampler import (Sampler, SampledToken, SamplerTensors, SamplingRequest,
                                   compute_prompt_logprobs)
from runner.engine.scheduler import SchedulerOutput
from runner.engine.sequence import Sequence
from runner.engine.worker import Worker, rank_device

logger = logging.getLogger("runner.engine")


@dataclass
class ModelRunnerOutput:
    # index into SchedulerOutput.scheduled -> sampled tokens (n of them when the request forks)
    sampled: dict[int, list[SampledToken]] = field(default_factory=dict)
    # index into SchedulerOutput.scheduled -> prompt logprob entries, in prompt order
    prompt_logprobs: dict[int, list] = field(default_factory=dict)
    # index into SchedulerOutput.scheduled -> a beam's best (token ids, logprobs)
    beam_candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)


@dataclass
class LaunchedStep:
    """A step whose forward pass is launched: its logits [R, V] (None when no row needs them)
    and which rows sample / carry prompt logprobs."""
    out: SchedulerOutput
    logits: Optional[torch.Tensor]
    sample_rows: list
    prompt_rows: list


@dataclass
class PendingSample:
    """A step sampled on the device and not read back yet (async scheduling). Token j of the
    sampler's output belongs to out.scheduled[owners[j]]; `token_ids` stays on the device for
    the next step's inputs, `host` is its copy on the way to pinned memory."""
    out: SchedulerOutput
    owners: list[int]
    token_ids: Optional[torch.Tensor] = None
    host: Optional[SamplerTensors] = None
    copied: Optional[object] = None          # CUDA event: the copy to the host is done


def _needs_history(p) -> bool:
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                or p.min_tokens or p.logits_processors)


def needs_fork(seq: Sequence) -> bool:
    """The first sample of a request with n > 1 (or best_of > 1) produces all its sequences'
    first tokens. Beams fork in the beam-search step instead."""
    group = seq.group
    return group.beam is None and not group.forked and group.num_seqs > 1


class ModelRunner:
    def __init__(self, config: EngineConfig, eos_token_ids: tuple[int, ...] = ()):
        self.config = config
        self.model_config = config.model_config
        self.device = config.device_config.device
        self.eos_token_ids = tuple(eos_token_ids)
        self.vocab_size = self.model_config.hf_config.vocab_size
        self.executor = None
        tp_size = config.parallel_config.tensor_parallel_size
        tp = None
        if tp_size > 1:
            self.executor = MultiprocExecutor(config, config.parallel_config.distributed_timeout_s)
            try:
                self.executor.wait_for("alive")
                tp = init_tensor_parallel(0, tp_size, self.executor.init_file,
                                          rank_device(config, 0), self.executor.timeout_s)
                self.executor.attach(tp)
                self.worker = Worker(config, 0, tp)
                self.executor.attach(tp, release_graphs=self.worker.release_graphs)
                self.executor.wait_for("ready")
            except WorkerFailure:
                self.executor.shutdown()
                raise
            except Exception as exc:
                err = self.executor.explain(exc) if self.executor.failure is None or \
                    isinstance(exc, RuntimeError) else WorkerFailure(self.executor.failure)
                self.executor.shutdown()
                raise err from exc
            logger.info("tensor parallel: %d ranks (%s)", tp_size, tp.backend)
        else:
            self.worker = Worker(config)
        self.model = self.worker.model
        self.kv_caches = self.worker.kv_caches
        self.num_blocks = self.worker.num_blocks
        self.block_bytes = self.worker.block_bytes
        self.load_seconds = self.worker.load_seconds
        config.cache_config.num_gpu_blocks = self.num_blocks
        self.sampler = Sampler(torch.Generator(device=self.device).manual_seed(
            self.model_config.seed), use_triton=config.kernel_backend == "triton")
        if self.device.type == "cuda":
            self.sampler.warm_up(self.vocab_size, config.scheduler_config.max_num_seqs,
                                 self.device)
        self._times = {"stage_s": 0.0, "sample_s": 0.0}
        self._overlap_error: Optional[BaseException] = None

    @property
    def times(self) -> dict:
        # stage_s: host input building; prepare_s: host-to-device copies; forward_s: launching
        # the forward (asynchronous on CUDA); sample_s: logits + sampler, which waits for the
        # GPU when it reads tokens back
        return {"prepare_s": self._times["stage_s"] + self.worker.times["prepare_s"],
                "forward_s": self.worker.times["forward_s"], "sample_s": self._times["sample_s"]}

    @property
    def num_graph_steps(self) -> int:
        return self.worker.num_graph_steps

    @property
    def custom_all_reduce(self) -> bool:
        """Whether small all-reduces take the custom one-shot path (tensor parallel GPUs)."""
        tp = self.worker.tp
        return tp is not None and tp.custom_all_reduce is not None

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()

    # ------------------------------------------------------------ step
    @torch.inference_mode()
    def execute_model(self, out: SchedulerOutput,
                      overlap: Optional[Callable[[], None]] = None) -> ModelRunnerOutput:
        """Run one step. `overlap` (the engine's output processing of the previous step) is
        called once the forward pass is launched and before its tokens are read back, so on a
        GPU that CPU work hides behind the GPU's."""
        step = self.launch(out)
        self.overlap(overlap)
        return self.sample(step)

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, prev: Optional["PendingSample"] = None
               ) -> LaunchedStep:
        """Stage a step and launch its forward pass (on CUDA it runs on while this returns).
        `prev`: the step before, launched with `sample_async` and not read back yet; the
        placeholder tokens it left (runner/engine/sequence.py) are taken from its sampled
        tokens on the device."""
        t0 = time.perf_counter()
        inputs = self.worker.inputs
        shape = inputs.stage(out)
        qsl = inputs.query_start_loc(shape[1])
        rows, sample_rows, prompt_rows = self._logit_rows(out, qsl)
        fill = self._placeholder_fill(out, qsl, shape[0], prev)
        # rows ascend within [0, num_tokens): as many as tokens means every row, in order
        step = StepInput(*shape, rows=None if len(rows) == shape[0]
                         else np.asarray(rows, np.int64),
                         blocks_to_copy=np.asarray(out.blocks_to_copy, np.int64)
                         if out.blocks_to_copy else None,
                         broadcast_input_ids=fill is not None and self.executor is not None)
        t1 = time.perf_counter()
        self._times["stage_s"] += t1 - t0
        self._overlap_error = None
        with self._guard():
            if self.executor is not None:
                self.executor.channel.send(EXECUTE, step, inputs.pack(*shape))
            logits = self.worker.execute(step, fill)    # on CUDA: launched, not finished
        return LaunchedStep(out, logits, sample_rows, prompt_rows)

    def _placeholder_fill(self, out: SchedulerOutput, qsl: list[int], num_tokens: int,
                          prev: Optional["PendingSample"]):
        """Input rows that hold a placeholder -> (index [2, P], prev's sampled tokens) on the
        device, for Worker.execute; None when there is none."""
        ids = self.worker.inputs.staged_input_ids(num_tokens)
        dst = np.flatnonzero(ids < 0)
        if not len(dst):
            return None
        owners = np.searchsorted(np.asarray(qsl), dst, side="right") - 1
        src = [out.scheduled[i].seq.pending_row for i in owners.tolist()]
        if prev is None or any(r is None for r in src):
            raise RuntimeError(
                f"request {out.scheduled[int(owners[0])].seq.request_id!r} has a token whose "
                "step was lost: an earlier step() failed while it was in flight. Abort the "
                "requests that were running then (LLM.generate does) and resubmit them.")
        ids[dst] = 0            # a valid id until the device fills the row
        index = numpy_to_device(np.stack([dst, np.asarray(src, np.int64)]), self.device)
        return index, prev.token_ids

    def overlap(self, work: Optional[Callable[[], None]]) -> None:
        """Run CPU work while the launched step computes. Its error is its own, not a worker
        failure: it is raised as it was by the step's `sample`/`sample_async`, once the step's
        collectives are done."""
        if work is None:
            return
        try:
            work()
        except Exception as exc:        # the step itself goes on: every rank is in it
            self._overlap_error = exc

    @torch.inference_mode()
    def sample(self, step: LaunchedStep) -> ModelRunnerOutput:
        """Sample the launched step and read its tokens back (waits for the GPU)."""
        t = time.perf_counter()
        with self._guard():
            result = self._sample(step.out, step.logits, step.sample_rows, step.prompt_rows)
        self._times["sample_s"] += time.perf_counter() - t
        self._raise_overlap_error()
        return result

    @torch.inference_mode()
    def sample_async(self, step: LaunchedStep) -> "PendingSample":
        """Queue the launched step's sampler and start copying its tokens to the host; read
        them with `finish`. Only for steps `can_sample_async` accepts."""
        t = time.perf_counter()
        owners, requests, logit_rows = self._sampling_requests(step.out, step.sample_rows)
        pending = PendingSample(step.out, owners)
        if requests:
            tensors = self.sampler.sample(self._select_rows(step.logits, logit_rows), requests)
            pending.token_ids = tensors.token_ids
            pending.host = tensors.to_host()
            if self.device.type == "cuda":
                pending.copied = torch.cuda.Event()
                pending.copied.record()
        self._times["sample_s"] += time.perf_counter() - t
        self._raise_overlap_error()
        return pending

    @staticmethod
    def can_sample_async(out: SchedulerOutput) -> bool:
        """Whether a step's samples can stay on the device until the next step is launched:
        not when it forks (n > 1, best_of), runs beams or computes prompt logprobs (their
        host-side work needs the values at once)."""
        for s in out.scheduled:
            group = s.seq.group
            if group.beam is not None or needs_fork(s.seq):
                return False
            if group.prompt_logprobs is not None and not group.prompt_logprobs_done():
                return False
        return True

    def finish(self, pending: "PendingSample") -> ModelRunnerOutput:
        """Wait for a `sample_async` step's tokens and return them."""
        result = ModelRunnerOutput()
        if pending.host is None:
            return result
        t = time.perf_counter()
        with self._guard():
            if pending.copied is not None:
                pending.copied.synchronize()
            for owner, tok in zip(pending.owners, pending.host.tokens()):
                result.sampled.setdefault(owner, []).append(tok)
        self._times["sample_s"] += time.perf_counter() - t
        return result

    @contextlib.contextmanager
    def _guard(self):
        """Around every call that waits on the other ranks: a hung one fails the step after
        distributed_timeout_s; a failed collective is explained as the worker failure."""
        if self.executor is None:
            yield
            return
        self.executor.check()
        self.executor.step_started = time.monotonic()
        try:
            yield
        except WorkerFailure:
            raise
        except (RuntimeError, OSError) as exc:
            raise self.executor.explain(exc) from exc
        finally:
            self.executor.step_started = None
        # an aborted collective can return instead of raising: never hand on such a step
        self.executor.check()

    def _raise_overlap_error(self) -> None:
        """An error of the engine's output processing is its own, not a worker failure: it
        is raised as it was, once the step's collectives are done."""
        if self._overlap_error is not None:
            exc, self._overlap_error = self._overlap_error, None
            raise exc

    def _logit_rows(self, out: SchedulerOutput, qsl: list[int]):
        """Which hidden rows need logits: the last token of each sequence that samples, and the
        prompt positions whose prompt_logprobs were asked for."""
        rows: list[int] = []               # hidden rows whose logits are needed
        sample_rows: list[tuple[int, int]] = []   # (scheduled index, row position in `rows`)
        prompt_rows: list[tuple[int, int, int]] = []   # (scheduled index, first pos, count)
        for i, s in enumerate(out.scheduled):
            base = qsl[i]
            group = s.seq.group
            if (group.prompt_logprobs is not None and not group.prompt_logprobs_done()
                    and s.seq.index == 0):
                first = max(s.start, len(group.prompt_logprobs) - 1)
                last = min(s.start + s.num_new_tokens, s.seq.prompt_len - 1)
                if last > first:
                    prompt_rows.append((i, len(rows), last - first))
                    rows += range(base + first - s.start, base + last - s.start)
            if s.do_sample:
                sample_rows.append((i, len(rows)))
                rows.append(base + s.num_new_tokens - 1)
        return rows, sample_rows, prompt_rows

    def _sample(self, out: SchedulerOutput, logits: torch.Tensor | None,
                sample_rows: list[tuple[int, int]],
                prompt_rows: list[tuple[int, int, int]]) -> ModelRunnerOutput:
        """logits [R, V] float32 of the chosen rows -> prompt logprobs, beam candidates and
        sampled tokens."""
        result = ModelRunnerOutput()
        if logits is None:
            return result
        for i, at, count in prompt_rows:
            s = out.scheduled[i]
            first = max(s.start, len(s.seq.group.prompt_logprobs) - 1)
            targets = s.seq.token_ids[first + 1:first + 1 + count]
            result.prompt_logprobs[i] = compute_prompt_logprobs(
                logits[at:at + count], targets, s.seq.sampling_params.prompt_logprobs)

        beam_rows = [(i, at) for i, at in sample_rows if out.scheduled[i].seq.group.beam]
        if beam_rows:
            self._beam_candidates(out, logits, beam_rows, result)
        owners, requests, logit_rows = self._sampling_requests(out, sample_rows)
        if requests:
            sampled = self.sampler(self._select_rows(logits, logit_rows), requests)
            for owner, tok in zip(owners, sampled):
                result.sampled.setdefault(owner, []).append(tok)
        return result

    def _sampling_requests(self, out: SchedulerOutput, sample_rows: list[tuple[int, int]]):
        """One SamplingRequest per token to draw: (owners: scheduled index of each, requests,
        logit_rows: the logits row of each). Beams are left out (their candidates come from
        `_beam_candidates`), and so are sequences that ended while the step was in flight
        (async scheduling: their last token, read back meanwhile, stopped them)."""
        owners, requests, logit_rows = [], [], []
        for i, at in sample_rows:
            seq = out.scheduled[i].seq
            group = seq.group
            if group.beam is not None or seq.is_finished():
                continue
            gens = group.generators if needs_fork(seq) else [seq.generator]
            p = group.sampling_params
            # copying the generated tokens costs O(length) per step: only when a rule reads them
            history = seq.output_token_ids if _needs_history(p) else []
            for gen in gens:
                requests.append(SamplingRequest(
                    params=p, prompt_token_ids=group.prompt_token_ids,
                    output_token_ids=history, generator=gen, eos_token_ids=self.eos_token_ids))
                owners.append(i)
                logit_rows.append(at)
        return owners, requests, logit_rows

    @staticmethod
    def _select_rows(logits: torch.Tensor, logit_rows: list[int]) -> torch.Tensor:
        if logit_rows == list(range(logits.shape[0])):
            return logits
        return logits[to_device(logit_rows, torch.long, logits.device)]

    def _beam_candidates(self, out: SchedulerOutput, logits: torch.Tensor,
                         beam_rows: list[tuple[int, int]], result: ModelRunnerOutput) -> None:
        """Each beam's best tokens by log-probability (HF's beam scores: log_softmax of the
        logits, EOS masked to -inf while fewer than min_tokens are out)."""
        rows = logits[[at for _, at in beam_rows]]                          # [Rb, V]
        temps = torch.tensor([max(out.scheduled[i].seq.group.beam_temperature, 0.0) or 1.0
                              for i, _ in beam_rows], device=rows.device).view(-1, 1)
        lps = torch.log_softmax(rows / temps, dim=-1)
        for r, (i, _) in enumerate(beam_rows):
            seq = out.scheduled[i].seq
            p = seq.sampling_params
            if seq.num_output_tokens < p.min_tokens:
                for t in seq.group.beam.eos_token_ids:
                    lps[r, t] = float("-inf")
        k = max(max(out.scheduled[i].seq.group.beam.num_candidates,
                    out.scheduled[i].seq.sampling_params.logprobs or 0) for i, _ in beam_rows)
        vals, ids = lps.topk(min(k, lps.shape[-1]), dim=-1)
        ids, vals = ids.tolist(), vals.tolist()       # one transfer each, not one per beam
        for r, (i, _) in enumerate(beam_rows):
            result.beam_candidates[i] = (ids[r], vals[r])
