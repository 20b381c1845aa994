"""The model runner (one per tensor-parallel rank, owned by its Worker): the model or its shard,
the paged KV cache, the CUDA graphs, and on the driver the sampler.

A step (SchedulerOutput, plain data: runner/engine/scheduler_output.py) on the driver:

  launch  stage the inputs on the host (input_batch.py: token ids, positions, slot mapping,
          block tables), choose the hidden rows that need logits (each sequence's last row
          when it samples, prompt positions whose prompt_logprobs were asked for), hand the
          staged step to the other ranks (the executor's `send`), then `execute`: block copies
          and swaps, inputs to the device, forward (eager, or a CUDA graph), logits of the
          chosen rows; on CUDA this returns while the GPU computes
  sample  the Sampler over the sampling rows -> ModelRunnerOutput by sequence id (a fork's
          first sample draws n tokens from its one row, one per output index), beam
          candidates, prompt logprobs; reads the tokens back, so it waits for the GPU
or, for an `async_sample` step,
  sample_async  queue the sampler and a copy of its tokens to pinned host memory, return at
          once; the next step's placeholder input ids are taken from those tokens on the
          device, and `finish` reads them back later.

The only request state kept here: the random generators of seeded requests (by request and
output index; dropped when the scheduler reports the request finished) and the last unread
step's tokens. Other ranks run `execute` on the staged arrays the driver sent.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from runner.engine.config import EngineConfig
from runner.engine.cuda_graphs import CUDAGraphRunner, capture_batch_sizes, decode_num_splits
from runner.engine.device_copy import numpy_to_device, to_device
from runner.engine.distributed import StepInput, TensorParallelGroup
from runner.engine.input_batch import InputBuilder
from runner.engine.model_loader import get_model
from runner.engine.parallel import ParallelContext
from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.sampler import PromptLogprobs, Sampler, SamplerTensors, SamplingRequest
from runner.engine.scheduler_output import BeamCandidates, ModelRunnerOutput, SchedulerOutput

logger = logging.getLogger("runner.engine")


class StepLostError(RuntimeError):
    """A placeholder's step is gone (an earlier step() failed while it was in flight)."""


def seed_for(seed: int, index: int) -> int:
    """Distinct, reproducible seeds for the n sequences of one seeded request."""
    return (seed + index * 0x9E3779B97F4A7C15) % (1 << 63)


@dataclass
class LaunchedStep:
    """A step whose forward pass is launched: the logits [S, V] of its sampling rows (None
    when none samples), which sequence each row is, and its prompt logprobs (reduced on the
    device chunk by chunk) with the first row of each sequence's among them."""
    out: SchedulerOutput
    logits: Optional[torch.Tensor]
    sample_rows: list                  # (scheduled index, logits row)
    prompt_rows: list                  # (scheduled index, first prompt-logprob row)
    prompt_logprobs: Optional[PromptLogprobs] = None


@dataclass
class PendingSample:
    """A step sampled on the device and not read back yet. Token j of the sampler's output
    belongs to sequence seq_ids[j]; `token_ids` stays on the device for the next step's
    inputs, `host` is its copy on the way to pinned memory."""
    step_id: int
    seq_ids: list[int]
    token_ids: Optional[torch.Tensor] = None
    host: Optional[SamplerTensors] = None
    copied: Optional[object] = None          # CUDA event: the copy to the host is done
    rows: dict = field(default_factory=dict)   # seq id -> row


class ModelRunner:
    def __init__(self, config: EngineConfig, rank: int, tp: Optional[TensorParallelGroup],
                 device: torch.device, eos_token_ids: tuple[int, ...] = ()):
        self.config = config
        self.rank, self.tp, self.device = rank, tp, device
        self.block_size = config.cache_config.block_size
        self.use_triton = config.kernel_backend == "triton"
        self.vocab_size = config.model_config.hf_config.vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        pc = ParallelContext(use_triton=self.use_triton) if tp is None else ParallelContext(
            rank, tp.world_size, tp.all_reduce, use_triton=self.use_triton)
        t0 = time.perf_counter()
        self.model = get_model(config.model_config, device, pc)
        self.load_seconds = time.perf_counter() - t0
        # LoRA (enable_lora): the adapters' layers, host cache and device slots
        self.lora_manager = None
        if config.lora_config is not None:
            from runner.engine.lora.manager import LoRAManager
            sched = config.scheduler_config
            self.lora_manager = LoRAManager(
                self.model, config.lora_config, device, config.model_config.dtype,
                max(sched.max_num_batched_tokens, 4 * sched.max_num_seqs), self.use_triton)
        # the model says what its paged KV cache looks like (per tensor-parallel rank)
        self.num_layers = self.model.num_layers
        self.num_kv_heads = self.model.num_kv_heads
        self.head_dim = self.model.head_dim
        self.dtype = config.model_config.dtype
        # kv_cache_dtype: fp8 caches hold 1-byte entries (twice the tokens in the same memory)
        self.cache_dtype = config.cache_config.cache_dtype or self.dtype
        self.kv_caches: list[torch.Tensor] = []
        self.num_blocks = 0
        self.graph_runner = None
        self.num_graph_steps = 0
        self.sampler = None
        if rank == 0:          # the driver samples
            self.sampler = Sampler(torch.Generator(device=device).manual_seed(
                config.model_config.seed), use_triton=self.use_triton)
            if device.type == "cuda":
                self.sampler.warm_up(self.vocab_size, config.scheduler_config.max_num_seqs,
                                     device)
        self._generators: dict[str, dict[int, torch.Generator]] = {}
        self._unread: Optional[PendingSample] = None     # the last async step's tokens
        self._read_back: tuple[int, dict] = (-1, {})     # (its step id, seq id -> token)
        # stage_s: host input building; prepare_s: host-to-device copies; forward_s: launching
        # the forward (asynchronous on CUDA); sample_s: logits + sampler, which waits for the
        # GPU when it reads tokens back
        self.times = {"stage_s": 0.0, "prepare_s": 0.0, "forward_s": 0.0, "sample_s": 0.0}

    @property
    def block_bytes(self) -> int:
        return (2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim
                * self.cache_dtype.itemsize)

    def initialize_kv_cache(self, num_blocks: int, num_cpu_blocks: int = 0) -> None:
        """Allocate the cache, the input staging buffers, and capture the CUDA graphs. The
        swap space (num_cpu_blocks, in host memory) is allocated when first used."""
        config, sched = self.config, self.config.scheduler_config
        self.num_blocks = num_blocks
        self.num_cpu_blocks = num_cpu_blocks
        self.swap_caches: list[torch.Tensor] = []
        # one tensor per layer: [2 (k, v), num_blocks, block_size, num_kv_heads, head_dim]. On
        # CPU it is left uninitialized: the OS commits pages only as blocks are written (a 4 GiB
        # memset took seconds at start-up), and attention masks every unwritten slot
        alloc = torch.empty if self.device.type == "cpu" else torch.zeros
        self.kv_caches = [alloc(2, num_blocks, self.block_size, self.num_kv_heads,
                                self.head_dim, dtype=self.cache_dtype, device=self.device)
                          for _ in range(self.num_layers)]
        self.inputs = InputBuilder(self.block_size, self.device, sched.max_num_batched_tokens,
                                   sched.max_num_seqs, sched.max_model_len,
                                   for_torch_reference=not self.use_triton)
        self.capture_len = min(config.max_seq_len_to_capture, sched.max_model_len)
        # compilation_config's cudagraph_capture_sizes when given, else the engine's buckets
        self.capture_sizes = config.cudagraph_capture_sizes or capture_batch_sizes(
            sched.max_num_seqs)
        if self.device.type == "cuda" and not config.enforce_eager:
            if self.use_triton:
                if self.lora_manager is not None:    # the graphs hold the LoRA kernels too
                    self.lora_manager.prepare_capture()
                self.graph_runner = CUDAGraphRunner(
                    self.model, self.kv_caches, sched.max_num_seqs, self.capture_len,
                    self.block_size, self.device, batch_sizes=self.capture_sizes)
                self.graph_runner.capture()
            elif self.rank == 0:
                logger.info("CUDA graphs need kernel_backend='triton': running eager.")

    def release_graphs(self) -> None:
        """Destroy the CUDA graphs before leaving the process group (see
        CUDAGraphRunner.release); later steps, if any, run eager."""
        if self.graph_runner is not None:
            self.graph_runner.release()
            self.graph_runner = None

    # ----------------------------------------------------------- the driver's step
    @torch.inference_mode()
    def launch(self, out: SchedulerOutput,
               send: Optional[Callable[[StepInput, list], None]] = None) -> LaunchedStep:
        """Stage a step and launch its forward pass (on CUDA it runs on while this returns);
        `send` hands the staged step to the other tensor-parallel ranks."""
        t0 = time.perf_counter()
        for rid in out.finished_req_ids:
            self._generators.pop(rid, None)
        inputs = self.inputs
        acc = None
        if out.scheduled:
            shape = inputs.stage(out)
            qsl = inputs.query_start_loc(shape[1])
            if self.lora_manager is not None:
                self.lora_manager.prepare(out, np.diff(np.asarray(qsl, np.int64)))
            rows, num_prompt, sample_rows, prompt_rows, targets, k = self._logit_rows(out, qsl)
            fill = self._placeholder_fill(out, qsl, shape[0])
            if num_prompt:
                acc = PromptLogprobs(to_device(targets, torch.long, self.device), k)
        else:                   # a step of swap-outs only
            shape, rows, num_prompt, sample_rows, prompt_rows, fill = (0, 0, 0), [], 0, [], [], \
                None

        def pairs(blocks):
            return np.asarray(blocks, np.int64) if blocks else None
        # sampling rows ascend within [0, num_tokens): as many as tokens means all, in order
        step = StepInput(*shape, rows=None if len(rows) == shape[0] and rows and not num_prompt
                         else np.asarray(rows, np.int64),
                         blocks_to_copy=pairs(out.blocks_to_copy),
                         broadcast_input_ids=fill is not None and send is not None,
                         blocks_to_swap_out=pairs(out.blocks_to_swap_out),
                         blocks_to_swap_in=pairs(out.blocks_to_swap_in),
                         num_prompt_rows=num_prompt)
        self.times["stage_s"] += time.perf_counter() - t0
        if send is not None:
            send(step, inputs.pack(*shape))
        logits = self.execute(step, fill, acc)    # on CUDA: launched, not finished
        return LaunchedStep(out, logits, sample_rows, prompt_rows, acc)

    @staticmethod
    def _logit_rows(out: SchedulerOutput, qsl: list[int]):
        """Which hidden rows need logits: first the prompt positions whose prompt_logprobs
        were asked for, then the last token of each sequence that samples. Returns (rows,
        how many are prompt rows, (scheduled index, sampling row), (scheduled index, first
        prompt row), the prompt rows' target ids, their largest top-k)."""
        rows: list[int] = []
        samples: list[int] = []
        sample_rows: list[tuple[int, int]] = []
        prompt_rows: list[tuple[int, int]] = []
        targets: list[int] = []
        k = 0
        for i, s in enumerate(out.scheduled):
            spec = s.prompt_logprobs
            if spec is not None:
                base = qsl[i] - s.start           # hidden row of position p: base + p
                prompt_rows.append((i, len(rows)))
                rows += range(base + spec.first, base + spec.first + len(spec.targets))
                targets += spec.targets
                k = max(k, spec.k)
            if s.sample is not None:
                sample_rows.append((i, len(samples)))
                samples.append(qsl[i + 1] - 1)
        return rows + samples, len(rows), sample_rows, prompt_rows, targets, k

    def _lost(self, request_id: str) -> StepLostError:
        return StepLostError(
            f"request {request_id!r} has a token whose step was lost: an earlier step() "
            "failed while it was in flight. Abort the requests that were running then "
            "(LLM.generate does) and resubmit them.")

    def _placeholder_fill(self, out: SchedulerOutput, qsl: list[int], num_tokens: int):
        """Input rows that hold a placeholder -> (index [2, P], the unread step's sampled
        tokens) on the device, for `execute`; None when there is none."""
        ids = self.inputs.staged_input_ids(num_tokens)
        dst = np.flatnonzero(ids < 0)
        if not len(dst):
            return None
        owners = np.searchsorted(np.asarray(qsl), dst, side="right") - 1
        unread, src = self._unread, []
        for i in owners.tolist():
            s = out.scheduled[i]
            if unread is None or s.placeholder_step != unread.step_id or \
                    s.seq_id not in unread.rows:
                raise self._lost(s.request_id)
            src.append(unread.rows[s.seq_id])
        ids[dst] = 0            # a valid id until the device fills the row
        index = numpy_to_device(np.stack([dst, np.asarray(src, np.int64)]), self.device)
        return index, unread.token_ids

    @torch.inference_mode()
    def sample(self, step: LaunchedStep, ended=()) -> ModelRunnerOutput:
        """Sample the launched step and read its results back (waits for the GPU). `ended`:
        sequences that the step before finished meanwhile (no token is drawn for them)."""
        t = time.perf_counter()
        out, logits = step.out, step.logits
        result = ModelRunnerOutput()
        if step.prompt_logprobs is not None:
            c = step.prompt_logprobs.chunk()        # the step's rows, on the host
            for i, at in step.prompt_rows:
                s = out.scheduled[i]
                k, end = s.prompt_logprobs.k, at + len(s.prompt_logprobs.targets)
                result.prompt_logprobs[s.seq_id] = PromptLogprobChunk(
                    c.logprobs[at:end], c.ranks[at:end], c.top_ids[at:end, :k],
                    c.top_logprobs[at:end, :k])
        if logits is not None:
            beam_rows = [(i, at) for i, at in step.sample_rows
                         if out.scheduled[i].sample.beam is not None]
            if beam_rows:
                self._beam_candidates(out, logits, beam_rows, result)
            owners, requests, logit_rows = self._sampling_requests(out, step.sample_rows, ended)
            if requests:
                sampled = self.sampler(self._select_rows(logits, logit_rows), requests)
                for owner, tok in zip(owners, sampled):
                    result.sampled.setdefault(out.scheduled[owner].seq_id, []).append(tok)
        self.times["sample_s"] += time.perf_counter() - t
        return result

    @torch.inference_mode()
    def sample_async(self, step: LaunchedStep, ended=()) -> PendingSample:
        """Queue the launched step's sampler and start copying its tokens to the host; read
        them with `finish`. For `async_sample` steps only (one token per row, no beams, no
        prompt logprobs)."""
        t = time.perf_counter()
        out = step.out
        owners, requests, logit_rows = self._sampling_requests(out, step.sample_rows, ended)
        pending = PendingSample(out.step_id, [out.scheduled[i].seq_id for i in owners])
        if requests:
            tensors = self.sampler.sample(self._select_rows(step.logits, logit_rows), requests)
            pending.token_ids = tensors.token_ids
            pending.host = tensors.to_host()
            if self.device.type == "cuda":
                pending.copied = torch.cuda.Event()
                pending.copied.record()
            pending.rows = {sid: j for j, sid in enumerate(pending.seq_ids)}
        self._unread = pending
        self.times["sample_s"] += time.perf_counter() - t
        return pending

    def finish(self, pending: PendingSample) -> ModelRunnerOutput:
        """Wait for a `sample_async` step's tokens and return them."""
        result = ModelRunnerOutput()
        if pending.host is None:
            return result
        t = time.perf_counter()
        if pending.copied is not None:
            pending.copied.synchronize()
        tokens = {}
        for sid, tok in zip(pending.seq_ids, pending.host.tokens()):
            result.sampled[sid] = [tok]
            tokens[sid] = tok.token_id
        self._read_back = (pending.step_id, tokens)
        self.times["sample_s"] += time.perf_counter() - t
        return result

    def _generator(self, request_id: str, index: int, seed: int) -> torch.Generator:
        gens = self._generators.setdefault(request_id, {})
        gen = gens.get(index)
        if gen is None:
            gen = gens[index] = torch.Generator(device=self.device).manual_seed(
                seed_for(seed, index))
        return gen

    def _sampling_requests(self, out: SchedulerOutput, sample_rows, ended):
        """One SamplingRequest per token to draw: (owners: scheduled index of each, requests,
        logit_rows: the logits row of each). Beams are left out (their candidates come from
        `_beam_candidates`), and so are sequences in `ended`."""
        owners, requests, logit_rows = [], [], []
        for i, at in sample_rows:
            s = out.scheduled[i]
            spec = s.sample
            if spec.beam is not None or s.seq_id in ended:
                continue
            history = spec.history
            if history is not None and s.placeholder_step >= 0:
                # its last token was read back after this step was scheduled
                step_id, tokens = self._read_back
                if step_id != s.placeholder_step or s.seq_id not in tokens:
                    raise self._lost(s.request_id)
                history = history + [tokens[s.seq_id]]
            p = spec.params
            for index in spec.indices:
                gen = None if p.seed is None else self._generator(s.request_id, index, p.seed)
                requests.append(SamplingRequest(
                    params=p, prompt_token_ids=spec.prompt_token_ids,
                    output_token_ids=history or [], generator=gen,
                    eos_token_ids=self.eos_token_ids, grammar_bitmask=spec.grammar_bitmask))
                owners.append(i)
                logit_rows.append(at)
        return owners, requests, logit_rows

    @staticmethod
    def _select_rows(logits: torch.Tensor, logit_rows: list[int]) -> torch.Tensor:
        if logit_rows == list(range(logits.shape[0])):
            return logits
        return logits[to_device(logit_rows, torch.long, logits.device)]

    def _beam_candidates(self, out: SchedulerOutput, logits: torch.Tensor, beam_rows,
                         result: ModelRunnerOutput) -> None:
        """Each beam's best tokens by log-probability (HF's beam scores: log_softmax of the
        logits over the temperature, EOS masked to -inf while fewer than min_tokens are out)."""
        rows = logits[[at for _, at in beam_rows]]                          # [Rb, V]
        specs = [out.scheduled[i].sample.beam for i, _ in beam_rows]
        temps = torch.tensor([b.temperature for b in specs], device=rows.device).view(-1, 1)
        lps = torch.log_softmax(rows / temps, dim=-1)
        for r, b in enumerate(specs):
            for t in b.masked_ids:
                lps[r, t] = float("-inf")
        k = max(b.num_candidates for b in specs)
        vals, ids = lps.topk(min(k, lps.shape[-1]), dim=-1)
        ids, vals = ids.tolist(), vals.tolist()       # one transfer each, not one per beam
        drawn = [r for r, b in enumerate(specs) if b.sample_temperature > 0.0]
        sampled = {}
        if drawn:
            # vLLM's beam search at temperature > 0: one token drawn from the row at that
            # temperature joins the raw-logprob candidates (with its raw logprob and rank)
            idx = torch.tensor(drawn, device=rows.device)
            t = torch.tensor([specs[r].sample_temperature for r in drawn],
                             device=rows.device).view(-1, 1)
            probs = torch.softmax(rows[idx].float() / t, dim=-1)
            gen = self.sampler.generator if self.sampler is not None else None
            toks = torch.multinomial(probs, 1, generator=gen).squeeze(1)     # [d]
            tok_lps = lps[idx].gather(1, toks[:, None]).squeeze(1)
            tok_ranks = (lps[idx] > tok_lps[:, None]).sum(-1) + 1
            for r, tok, lp, rank in zip(drawn, toks.tolist(), tok_lps.tolist(),
                                        tok_ranks.tolist()):
                sampled[r] = (tok, lp, rank)
        for r, (i, _) in enumerate(beam_rows):
            cands = BeamCandidates((ids[r], vals[r]))
            if r in sampled:
                tok, lp, rank = sampled[r]
                cands.sampled = tok
                if tok not in ids[r]:
                    ids[r].append(tok)
                    vals[r].append(lp)
                    cands.extra_rank = rank
            result.beam_candidates[out.scheduled[i].seq_id] = cands

    # ------------------------------------------------------------ every rank's step
    @torch.inference_mode()
    def execute(self, step: StepInput, fill: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                prompt_logprobs: Optional[PromptLogprobs] = None) -> Optional[torch.Tensor]:
        """Run a staged step; returns the logits [S, V] of its sampling rows (float32) on
        every rank, or None when none samples. The prompt-logprob rows' logits come first,
        max_num_seqs rows at a time (their float32 [rows, vocab] transients stay within what
        the memory profile measured), into `prompt_logprobs` on the driver.

        `fill` (async scheduling, the driver): (index [2, P], sampled [R]) on the device:
        input row index[0, j] takes the token sampled in row index[1, j] of the step before,
        which was not read back; with tensor parallelism the driver then broadcasts the input
        ids (step.broadcast_input_ids) and the other ranks receive them here."""
        if step.blocks_to_swap_out is not None or step.blocks_to_swap_in is not None:
            self._swap(step.blocks_to_swap_out, step.blocks_to_swap_in)
        if step.blocks_to_copy is not None and len(step.blocks_to_copy):
            # copy-on-write (forks, a partly reused cached block): one batched copy per layer,
            # not one per block (beam search forks hundreds of blocks a step). The sources are
            # gathered before any destination is written.
            src, dst = numpy_to_device(step.blocks_to_copy.T, self.device).unbind(0)
            for cache in self.kv_caches:
                # on the raw bytes: indexed copies are not defined for every dtype (fp8)
                raw = cache.view(torch.uint8)
                raw[:, dst] = raw[:, src]
        if not step.num_seqs:
            return None
        t0 = time.perf_counter()
        input_ids, positions, meta = self.inputs.load(step.num_tokens, step.num_seqs,
                                                      step.width)
        if fill is not None:
            index, sampled = fill
            input_ids[index[0]] = sampled[index[1]]
        if step.broadcast_input_ids:
            self.tp.broadcast(input_ids)
        t_built = time.perf_counter()
        if self.use_triton and meta.decode_only and meta.max_seq_len <= self.capture_len and \
                self.device.type == "cuda":
            # decode as the captured graph would: same split count, graph or not
            meta.max_seq_len = self.capture_len
            meta.num_splits = decode_num_splits(len(meta.seq_lens), self.num_kv_heads,
                                                self.capture_len, self.capture_sizes, self.device)
        if self.graph_runner is not None and self.graph_runner.can_run(meta):
            hidden = self.graph_runner.run(input_ids, positions, meta)       # [T, H]
            self.num_graph_steps += 1
        else:
            hidden = self.model(input_ids, positions, self.kv_caches, meta)    # [T, H]
        self.times["prepare_s"] += t_built - t0
        self.times["forward_s"] += time.perf_counter() - t_built
        if step.rows is not None:
            if not len(step.rows):
                return None
            hidden = hidden[numpy_to_device(step.rows, hidden.device)]      # [R, H]
        chunk = self.config.scheduler_config.max_num_seqs
        for at in range(0, step.num_prompt_rows, chunk):
            logits = self.logits(hidden[at:min(at + chunk, step.num_prompt_rows)])
            if prompt_logprobs is not None:
                prompt_logprobs.add(logits)
        if hidden.shape[0] == step.num_prompt_rows:
            return None
        return self.logits(hidden[step.num_prompt_rows:]).float()           # [S, V]

    def _swap(self, out_pairs: Optional[np.ndarray], in_pairs: Optional[np.ndarray]) -> None:
        """Swap-outs (gpu -> cpu blocks), then swap-ins (cpu -> gpu), on the raw bytes of
        each layer's cache. Preemption is rare: the copies wait for the GPU."""
        if not self.swap_caches:
            if self.num_cpu_blocks < 1:
                raise RuntimeError("a block swap without swap space (swap_space=0)")
            pin = self.device.type == "cuda"
            self.swap_caches = [torch.empty(2, self.num_cpu_blocks, *c.shape[2:],
                                            dtype=c.dtype, pin_memory=pin)
                                for c in self.kv_caches]
        for gpu, cpu in zip(self.kv_caches, self.swap_caches):
            g, c = gpu.view(torch.uint8), cpu.view(torch.uint8)
            if out_pairs is not None:
                src = numpy_to_device(out_pairs[:, 0], self.device)
                c[:, torch.from_numpy(out_pairs[:, 1])] = g[:, src].cpu()
            if in_pairs is not None:
                dst = numpy_to_device(in_pairs[:, 1], self.device)
                g[:, dst] = c[:, torch.from_numpy(in_pairs[:, 0])].to(self.device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.compute_logits(hidden)          # [R, V] or this rank's [R, V/N]
        if self.tp is not None:
            logits = self.tp.gather_logits(logits, self.vocab_size)
        return logits
