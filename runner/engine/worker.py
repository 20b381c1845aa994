"""The Worker: one tensor-parallel rank's device, process group and ModelRunner (vLLM's owners).

With tensor_parallel_size=1 the executor owns one Worker in the engine's process. With N > 1
the driver's Worker is rank 0 and ranks 1..N-1 run `worker_main` in processes of their own
(started by runner/engine/executor.py). Every rank builds its Worker the same way, so the
collectives of start-up line up: load the weight shard (the ModelRunner), set up the custom
all-reduce (GPUs), size the KV cache (memory profiling on CUDA), agree on the smallest block
count of all ranks, allocate the cache and capture CUDA graphs (whose forward holds all_reduce
calls). Each step the driver's ModelRunner stages the inputs, the executor sends them
(distributed.StepChannel) and every rank runs `ModelRunner.execute`; the logits shards are
gathered on every rank and only the driver samples.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Optional

import torch

from runner.engine.attention import AttentionMetadata
from runner.engine.block_manager import cdiv
from runner.engine.config import EngineConfig
from runner.engine.custom_all_reduce import MAX_BYTES
from runner.engine.distributed import (EXECUTE, TensorParallelGroup, init_tensor_parallel,
                                       recv_step)
from runner.engine.model_runner import ModelRunner
from runner.engine.worker_rpc import WorkerRPCMixin
from runner.engine.utils.torch_utils import set_random_seed

logger = logging.getLogger("runner.engine")


def cpu_kv_cache_bytes() -> int:
    """The most a CPU KV cache may take: VLLM_CPU_KVCACHE_SPACE GiB (vLLM's variable; unset,
    empty or 0: its default, 4 GiB). CPU has no memory profiling to size it by."""
    value = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    try:
        gib = float(value) if value else 0.0
    except ValueError:
        raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {value!r}.") \
            from None
    if gib < 0:
        raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be >= 0 GiB, got {value!r}.")
    return int((gib or 4.0) * 2**30)


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    device = config.device_config.device
    if device.type == "cuda" and config.parallel_config.tensor_parallel_size > 1:
        return torch.device("cuda", rank)
    return device


class Worker(WorkerRPCMixin):
    def __init__(self, config: EngineConfig, rank: int = 0,
                 tp: Optional[TensorParallelGroup] = None, eos_token_ids: tuple = ()):
        self.config = config
        self.model_config = config.model_config
        self.rank, self.tp = rank, tp
        self.device = rank_device(config, rank)
        # vLLM's workers seed Python's, numpy's and torch's global generators at start-up and
        # again once the cache is set up, so that loading and warm-up leave no trace in them
        set_random_seed(config.model_config.seed)
        self.block_size = config.cache_config.block_size
        # what this process already holds on the device (another engine, the user's tensors):
        # the KV sizing counts only what this engine adds on top of it
        self.baseline_bytes = 0
        if self.device.type == "cuda":
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            self._check_free_memory()
        self.model_runner = mr = ModelRunner(config, rank, tp, self.device, eos_token_ids)
        if tp is not None and not config.parallel_config.disable_custom_all_reduce:
            # decode's all-reduces are [num_seqs, hidden]: size the buffer for the largest
            hidden = config.model_config.hf_config.hidden_size
            elem = torch.empty((), dtype=config.model_config.dtype).element_size()
            tp.init_custom_all_reduce(config.model_config.dtype, min(
                MAX_BYTES, config.scheduler_config.max_num_seqs * hidden * elem))
        num_blocks = self._determine_num_blocks()
        self.num_blocks = tp.min_int(num_blocks) if tp else num_blocks
        max_len = config.scheduler_config.max_model_len
        if self.num_blocks * self.block_size < max_len:
            raise ValueError(
                f"the KV cache holds {self.num_blocks * self.block_size} tokens "
                f"({self.num_blocks} blocks of {self.block_size}), fewer than max_model_len="
                f"{max_len}: one sequence could never finish. Raise num_gpu_blocks_override "
                "or gpu_memory_utilization (on CPU: VLLM_CPU_KVCACHE_SPACE, GiB), or lower "
                "max_model_len.")
        # swap_space: GiB of host memory per rank for swapped-out sequence groups
        self.num_cpu_blocks = int(config.cache_config.swap_space * 2**30 // mr.block_bytes)
        mr.initialize_kv_cache(self.num_blocks, self.num_cpu_blocks)
        if rank == 0:
            logger.info("KV cache (%s): %d blocks x %d tokens = %d tokens (%.1f MiB per rank); "
                        "swap space %d blocks", str(mr.cache_dtype).replace("torch.", ""),
                        self.num_blocks, self.block_size, self.num_blocks * self.block_size,
                        self.num_blocks * mr.block_bytes / 2**20, self.num_cpu_blocks)
        set_random_seed(config.model_config.seed)

    def get_model(self) -> torch.nn.Module:
        """The model (LLM.apply_model / collective_rpc reach it through here)."""
        return self.model_runner.model

    # ---------------------------------------------------------------- KV sizing
    def _check_free_memory(self) -> None:
        """vLLM's start-up check: the gpu_memory_utilization share must be free on the card
        now, or the cache would be sized for memory that others (another engine in this
        process, other processes) hold."""
        util = self.config.cache_config.gpu_memory_utilization
        if self.config.cache_config.num_gpu_blocks_override is not None:
            return
        free, total = torch.cuda.mem_get_info(self.device)
        if free < util * total:
            raise ValueError(
                f"free memory on {self.device} at start-up ({free / 2**30:.2f} of "
                f"{total / 2**30:.2f} GiB) is less than gpu_memory_utilization={util} "
                f"({util * total / 2**30:.2f} GiB): lower gpu_memory_utilization or free the "
                "memory other engines (del llm) or processes hold.")

    def _determine_num_blocks(self) -> int:
        cache = self.config.cache_config
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        sched = self.config.scheduler_config
        if self.device.type != "cuda":
            # what max_num_seqs sequences of max_model_len tokens fill, within the CPU cap
            wanted = sched.max_num_seqs * cdiv(sched.max_model_len, self.block_size)
            cap = cpu_kv_cache_bytes() // self.model_runner.block_bytes
            return max(1, min(wanted, cap))
        return self._profile_num_gpu_blocks()

    @torch.inference_mode()
    def _profile_num_gpu_blocks(self) -> int:
        """Peak memory of a forward pass at max_num_batched_tokens, then what is left of the
        gpu_memory_utilization fraction of the card goes to the KV cache."""
        sched, mr = self.config.scheduler_config, self.model_runner
        num_tokens = sched.max_num_batched_tokens
        seq_len = min(sched.max_model_len, num_tokens)
        num_seqs = cdiv(num_tokens, seq_len)
        tmp_blocks = num_seqs * cdiv(seq_len, self.block_size)
        tmp_caches = [torch.zeros(2, tmp_blocks, self.block_size, mr.num_kv_heads,
                                  mr.head_dim, dtype=mr.cache_dtype, device=self.device)
                      for _ in range(mr.num_layers)]
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
        hidden = mr.model(torch.tensor(ids, device=self.device),
                          torch.tensor(pos, device=self.device), tmp_caches, meta)
        logits = mr.logits(hidden[-min(len(hidden), sched.max_num_seqs):])
        # the sampler's largest transient: a sorted softmax over every row (top-p / top-k)
        logits.float().softmax(dim=-1).sort(dim=-1)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        tmp_bytes = sum(c.numel() * c.element_size() for c in tmp_caches)
        del hidden, logits
        graph_reserve = self._profile_graph_pool(tmp_caches)
        del tmp_caches
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        budget = total * self.config.cache_config.gpu_memory_utilization
        # the custom all-reduce's buffer lives outside PyTorch's allocator statistics
        ca = self.tp.custom_all_reduce if self.tp is not None else None
        extra = graph_reserve + (ca.max_bytes if ca else 0)
        # this engine's weights and forward-pass peak, without what the process held before
        own = peak - tmp_bytes - self.baseline_bytes
        # and the card must really have it: other engines and processes hold memory too
        transient = peak - tmp_bytes - torch.cuda.memory_allocated(self.device)
        available = min(budget - own - extra, free - transient - extra)
        num_blocks = int(available // mr.block_bytes)
        logger.info("memory profile: weights + peak %.2f GiB without cache, CUDA-graph reserve "
                    "%.2f GiB, budget %.2f GiB, free %.2f GiB -> %d blocks", own / 2**30,
                    graph_reserve / 2**30, budget / 2**30, free / 2**30, num_blocks)
        if num_blocks < 1:
            raise ValueError(
                f"no memory left for the KV cache: the model and a forward pass of "
                f"{num_tokens} tokens take {own / 2**30:.2f} GiB of the "
                f"{budget / 2**30:.2f} GiB that gpu_memory_utilization="
                f"{self.config.cache_config.gpu_memory_utilization} allows, and "
                f"{free / 2**30:.2f} GiB of the card is free (other engines or processes hold "
                "the rest). Raise gpu_memory_utilization, lower max_num_batched_tokens, or free "
                "the other engine first (del llm).")
        return num_blocks

    def _profile_graph_pool(self, tmp_caches: list[torch.Tensor]) -> int:
        """CUDA graphs keep their largest decode batch's activations in a private pool that
        outlives the profile: measure a decode-shaped forward at max_num_seqs and reserve it."""
        mr = self.model_runner
        if self.config.enforce_eager or not mr.use_triton:
            return 0
        n = min(self.config.scheduler_config.max_num_seqs, tmp_caches[0].shape[1])
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        meta = self._profile_metadata(list(range(0, n * self.block_size, self.block_size)),
                                      list(range(n + 1)), [1] * n, [[b] for b in range(n)])
        hidden = mr.model(torch.zeros(n, dtype=torch.long, device=self.device),
                          torch.zeros(n, dtype=torch.long, device=self.device), tmp_caches,
                          meta)
        mr.logits(hidden).float().softmax(dim=-1).sort(dim=-1)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

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


def _exit_with_parent(parent_pid: int) -> None:
    """No orphans: a worker whose driver died (even by SIGKILL) exits within a second."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def worker_main(rank: int, config: EngineConfig, init_file: str, timeout_s: float,
                parent_pid: int, conn) -> None:
    """Entry point of worker process `rank`: join the group, build the Worker, run steps."""
    _exit_with_parent(parent_pid)
    tp_size = config.parallel_config.tensor_parallel_size
    try:
        device = rank_device(config, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp_size))
        conn.send_bytes(b"alive")
        tp = init_tensor_parallel(rank, tp_size, init_file, device, timeout_s)
        worker = Worker(config, rank, tp)
        conn.send_bytes(b"ready")
        runner = worker.model_runner
        while True:
            try:
                cmd, step = recv_step(conn, runner.inputs)
            except EOFError:           # the driver is gone
                break
            if cmd != EXECUTE:
                break
            runner.execute(step)
        runner.release_graphs()
        tp.destroy()
    except BaseException:
        try:
            conn.send_bytes(b"error:" + traceback.format_exc().encode())
        except Exception:
            pass
        raise
