"""The model runner: owns the model and the KV cache tensors, and runs one scheduled step.

execute_model(SchedulerOutput):
  1. copy-on-write block copies the block manager asked for;
  2. prepare inputs: the scheduled tokens of every sequence flattened into one batch, their
     positions, the cache slot of each (slot_mapping), block tables, query/context lengths;
  3. forward (eager torch; CUDA graphs and Triton kernels plug in here in the GPU path);
  4. logits only for the rows that need them (the last token of each sequence that samples, and
     prompt positions whose prompt_logprobs were asked for);
  5. the Sampler -> SampledToken per sampled row. A request with n > 1 samples its first token n
     times from the one prompt row, once per output sequence (the engine forks afterwards).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from runner.engine.attention import AttentionMetadata
from runner.engine.block_manager import cdiv
from runner.engine.config import EngineConfig
from runner.engine.cuda_graphs import CUDAGraphRunner, capture_batch_sizes, decode_num_splits
from runner.engine.input_batch import InputBuilder
from runner.engine.model_loader import get_model
from runner.engine.parallel import ParallelContext
from runner.engine.sampler import Sampler, SampledToken, SamplingRequest, compute_prompt_logprobs
from runner.engine.scheduler import SchedulerOutput
from runner.engine.sequence import Sequence

logger = logging.getLogger("runner.engine")

_CPU_KV_CACHE_BYTES = 4 << 30   # CPU has no memory profiling: cap the cache at 4 GiB


@dataclass
class ModelRunnerOutput:
    # index into SchedulerOutput.scheduled -> sampled tokens (n of them when the request forks)
    sampled: dict[int, list[SampledToken]] = field(default_factory=dict)
    # index into SchedulerOutput.scheduled -> prompt logprob entries, in prompt order
    prompt_logprobs: dict[int, list] = field(default_factory=dict)
    # index into SchedulerOutput.scheduled -> a beam's best (token ids, logprobs)
    beam_candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)


def _needs_history(p) -> bool:
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                or p.min_tokens or p.logits_processors)


def needs_fork(seq: Sequence) -> bool:
    """The first sample of a request with n > 1 (or best_of > 1) produces all its sequences'
    first tokens. Beams fork in the beam-search step instead."""
    group = seq.group
    return group.beam is None and not group.forked and group.num_seqs > 1


class ModelRunner:
    def __init__(self, config: EngineConfig, eos_token_id: int | None):
        self.config = config
        self.model_config = config.model_config
        self.device = config.device_config.device
        self.block_size = config.cache_config.block_size
        self.eos_token_id = eos_token_id
        hf = self.model_config.hf_config
        self.use_triton = config.kernel_backend == "triton"
        t0 = time.perf_counter()
        self.model = get_model(self.model_config, self.device,
                               ParallelContext(use_triton=self.use_triton))
        self.load_seconds = time.perf_counter() - t0
        # the model says what its paged KV cache looks like (families name their configs
        # differently: n_layer, num_hidden_layers, ...)
        self.num_layers = self.model.num_layers
        self.num_kv_heads = self.model.num_kv_heads
        self.head_dim = self.model.head_dim
        self.dtype = self.model_config.dtype
        self.vocab_size = hf.vocab_size
        self.sampler = Sampler(torch.Generator(device=self.device).manual_seed(
            self.model_config.seed))
        self.num_blocks = self._determine_num_blocks()
        max_len = config.scheduler_config.max_model_len
        if self.num_blocks * self.block_size < max_len:
            raise ValueError(
                f"the KV cache holds {self.num_blocks * self.block_size} tokens "
                f"({self.num_blocks} blocks of {self.block_size}), fewer than max_model_len="
                f"{max_len}: one sequence could never finish. Raise num_gpu_blocks_override "
                "or gpu_memory_utilization, or lower max_model_len.")
        config.cache_config.num_gpu_blocks = self.num_blocks
        # one tensor per layer: [2 (k, v), num_blocks, block_size, num_kv_heads, head_dim]. On
        # CPU it is left uninitialized: the OS commits pages only as blocks are written (a 4 GiB
        # memset took seconds at start-up), and attention masks every unwritten slot
        alloc = torch.empty if self.device.type == "cpu" else torch.zeros
        self.kv_caches = [alloc(2, self.num_blocks, self.block_size, self.num_kv_heads,
                                self.head_dim, dtype=self.dtype, device=self.device)
                          for _ in range(self.num_layers)]
        logger.info("KV cache: %d blocks x %d tokens = %d tokens (%.1f MiB)", self.num_blocks,
                    self.block_size, self.num_blocks * self.block_size,
                    self.num_blocks * self.block_bytes / 2**20)
        sched = config.scheduler_config
        self.inputs = InputBuilder(self.block_size, self.device, sched.max_num_batched_tokens,
                                   sched.max_num_seqs, sched.max_model_len,
                                   for_torch_reference=not self.use_triton)
        self.graph_runner = None
        if self.device.type == "cuda" and not config.enforce_eager:
            if self.use_triton:
                self.graph_runner = CUDAGraphRunner(
                    self.model, self.kv_caches, sched.max_num_seqs,
                    min(config.max_seq_len_to_capture, sched.max_model_len), self.block_size,
                    self.device)
                self.graph_runner.capture()
            else:
                logger.info("CUDA graphs need kernel_backend='triton': running eager.")
        self.num_graph_steps = 0
        # prepare_s: host input building; forward_s: launching the forward (asynchronous on
        # CUDA); sample_s: logits + sampler, which waits for the GPU when it reads tokens back
        self.times = {"prepare_s": 0.0, "forward_s": 0.0, "sample_s": 0.0}
        self.capture_len = min(config.max_seq_len_to_capture, sched.max_model_len)
        self.capture_sizes = capture_batch_sizes(sched.max_num_seqs)

    # ---------------------------------------------------------------- KV sizing
    @property
    def block_bytes(self) -> int:
        return (2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim
                * torch.empty((), dtype=self.dtype).element_size())

    def _determine_num_blocks(self) -> int:
        cache = self.config.cache_config
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        sched = self.config.scheduler_config
        if self.device.type != "cuda":
            wanted = sched.max_num_seqs * cdiv(sched.max_model_len, self.block_size)
            return max(1, min(wanted, _CPU_KV_CACHE_BYTES // self.block_bytes))
        return self._profile_num_gpu_blocks()

    @torch.inference_mode()
    def _profile_num_gpu_blocks(self) -> int:
        """Peak memory of a forward pass at max_num_batched_tokens, then what is left of the
        gpu_memory_utilization fraction of the card goes to the KV cache."""
        sched = self.config.scheduler_config
        num_tokens = sched.max_num_batched_tokens
        seq_len = min(sched.max_model_len, num_tokens)
        num_seqs = cdiv(num_tokens, seq_len)
        tmp_blocks = num_seqs * cdiv(seq_len, self.block_size)
        tmp_caches = [torch.zeros(2, tmp_blocks, self.block_size, self.num_kv_heads,
                                  self.head_dim, dtype=self.dtype, device=self.device)
                      for _ in range(self.num_layers)]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        lens = [seq_len] * (num_tokens // seq_len) + ([num_tokens % seq_len]
                                                      if num_tokens % seq_len else [])
        ids, pos, slots, qsl, tables = [], [], [], [0], []
        for b, n in enumerate(lens):
            blocks = list(range(b * cdiv(seq_len, self.block_size),
                                (b + 1) * cdiv(seq_len, self.block_size)))
            ids += [0] * n
            pos += list(range(n))
            slots += [blocks[p // self.block_size] * self.block_size + p % self.block_size
                      for p in range(n)]
            qsl.append(qsl[-1] + n)
            tables.append(blocks)
        meta = self._profile_metadata(slots, qsl, lens, tables)
        hidden = self.model(torch.tensor(ids, device=self.device),
                            torch.tensor(pos, device=self.device), tmp_caches, meta)
        logits = self.model.compute_logits(hidden[-min(len(hidden), sched.max_num_seqs):])
        # the sampler's largest transient: a sorted softmax over every row (top-p / top-k)
        logits.float().softmax(dim=-1).sort(dim=-1)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        tmp_bytes = sum(c.numel() * c.element_size() for c in tmp_caches)
        del hidden, logits
        graph_reserve = self._profile_graph_pool(tmp_caches)
        del tmp_caches
        torch.cuda.empty_cache()
        _, total = torch.cuda.mem_get_info()
        budget = total * self.config.cache_config.gpu_memory_utilization
        available = budget - (peak - tmp_bytes) - graph_reserve
        num_blocks = int(available // self.block_bytes)
        logger.info("memory profile: peak %.2f GiB without cache, CUDA-graph reserve %.2f GiB, "
                    "budget %.2f GiB -> %d blocks", (peak - tmp_bytes) / 2**30,
                    graph_reserve / 2**30, budget / 2**30, num_blocks)
        if num_blocks < 1:
            raise ValueError(
                f"no memory left for the KV cache: the model and a forward pass of "
                f"{num_tokens} tokens take {(peak - tmp_bytes) / 2**30:.2f} GiB of the "
                f"{budget / 2**30:.2f} GiB that gpu_memory_utilization="
                f"{self.config.cache_config.gpu_memory_utilization} allows. Raise it or lower "
                "max_num_batched_tokens.")
        return num_blocks

    def _profile_graph_pool(self, tmp_caches: list[torch.Tensor]) -> int:
        """CUDA graphs keep their largest decode batch's activations in a private pool that
        outlives the profile: measure a decode-shaped forward at max_num_seqs and reserve it."""
        if self.config.enforce_eager or not self.use_triton:
            return 0
        n = min(self.config.scheduler_config.max_num_seqs, tmp_caches[0].shape[1])
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        meta = self._profile_metadata(list(range(0, n * self.block_size, self.block_size)),
                                      list(range(n + 1)), [1] * n, [[b] for b in range(n)])
        hidden = self.model(torch.zeros(n, dtype=torch.long, device=self.device),
                            torch.zeros(n, dtype=torch.long, device=self.device), tmp_caches,
                            meta)
        self.model.compute_logits(hidden).float().softmax(dim=-1).sort(dim=-1)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    # ------------------------------------------------------------ inputs
    def _profile_metadata(self, slots, qsl, seq_lens, tables) -> AttentionMetadata:
        """Metadata for the memory-profiling pass: prefill-only sequences (no decode rows)."""
        dev = self.device
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            query_start_loc=qsl, seq_lens=seq_lens,
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            max_query_len=max(seq_lens), max_seq_len=max(seq_lens),
            query_start_loc_t=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens_t=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            decode_idx=torch.zeros(0, dtype=torch.long, device=dev),
            prefill_idx=tuple(range(len(seq_lens))))

    # ------------------------------------------------------------ step
    @torch.inference_mode()
    def execute_model(self, out: SchedulerOutput) -> ModelRunnerOutput:
        if out.blocks_to_copy:
            # copy-on-write for forked sequences: one batched copy per layer, not one per block
            # (beam search forks hundreds of blocks a step). A destination is always a fresh
            # block and a source a still-shared one, so no copy reads another's destination.
            src, dst = zip(*out.blocks_to_copy)
            src = torch.tensor(src, dtype=torch.long).to(self.device, non_blocking=True)
            dst = torch.tensor(dst, dtype=torch.long).to(self.device, non_blocking=True)
            for cache in self.kv_caches:
                cache[:, dst] = cache[:, src]
        t0 = time.perf_counter()
        input_ids, positions, meta = self.inputs.build(out)
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
        t1 = time.perf_counter()
        result = self._sample(out, meta, hidden)
        self.times["prepare_s"] += t_built - t0
        self.times["forward_s"] += t1 - t_built
        self.times["sample_s"] += time.perf_counter() - t1
        return result

    def _sample(self, out: SchedulerOutput, meta: AttentionMetadata,
                hidden: torch.Tensor) -> ModelRunnerOutput:
        rows: list[int] = []               # hidden rows whose logits are needed
        sample_rows: list[tuple[int, int]] = []   # (scheduled index, row position in `rows`)
        prompt_rows: list[tuple[int, int, int]] = []   # (scheduled index, first pos, count)
        for i, s in enumerate(out.scheduled):
            base = meta.query_start_loc[i]
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
        result = ModelRunnerOutput()
        if not rows:
            return result
        if len(rows) == hidden.shape[0]:          # decode: every row is needed, in order
            logits = self.model.compute_logits(hidden).float()                 # [R, V]
        else:
            index = torch.tensor(rows, dtype=torch.long).to(hidden.device, non_blocking=True)
            logits = self.model.compute_logits(hidden[index]).float()          # [R, V]

        for i, at, count in prompt_rows:
            s = out.scheduled[i]
            first = max(s.start, len(s.seq.group.prompt_logprobs) - 1)
            targets = s.seq.token_ids[first + 1:first + 1 + count]
            result.prompt_logprobs[i] = compute_prompt_logprobs(
                logits[at:at + count], targets, s.seq.sampling_params.prompt_logprobs)

        requests, owners, logit_rows = [], [], []
        beam_rows = [(i, at) for i, at in sample_rows if out.scheduled[i].seq.group.beam]
        if beam_rows:
            self._beam_candidates(out, logits, beam_rows, result)
        for i, at in sample_rows:
            seq = out.scheduled[i].seq
            group = seq.group
            if group.beam is not None:
                continue
            gens = group.generators if needs_fork(seq) else [seq.generator]
            p = group.sampling_params
            # copying the generated tokens costs O(length) per step: only when a rule reads them
            history = seq.output_token_ids if _needs_history(p) else []
            for gen in gens:
                requests.append(SamplingRequest(
                    params=p, prompt_token_ids=group.prompt_token_ids,
                    output_token_ids=history, generator=gen, eos_token_id=self.eos_token_id))
                owners.append(i)
                logit_rows.append(at)
        if requests:
            if logit_rows != list(range(logits.shape[0])):
                logits = logits[torch.tensor(logit_rows, dtype=torch.long).to(logits.device)]
            sampled = self.sampler(logits, requests)
            for owner, tok in zip(owners, sampled):
                result.sampled.setdefault(owner, []).append(tok)
        return result

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
