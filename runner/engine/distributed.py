"""Tensor parallelism's plumbing: which tensor_parallel_size a model and machine allow, the
process groups, and the channel that carries each step from the driver to the workers.

Rank 0 is the driver (the engine's own process); ranks 1..N-1 are worker processes
(runner/engine/worker.py, started by runner/engine/executor.py). Two kinds of traffic:

- collectives inside the forward pass (the row-parallel all_reduce, the logits all_gather):
  torch.distributed on the device group, NCCL on GPUs and gloo on CPU; on GPUs, small
  all-reduces take the custom one-shot path (runner/engine/custom_all_reduce.py);
- the step's inputs, driver -> workers: `StepChannel`, one pipe per worker carrying one flat
  int64 array per step (header, the staged input arrays, the rows that need logits, the blocks
  to swap out, swap in and copy: every rank moves its own shard of them). With async
  scheduling, input ids the driver sampled on its GPU and has not read back follow on the
  device group (a broadcast from rank 0 before the forward). No tensor is
  pickled per step; a worker waits on its pipe with no timeout while the engine is idle, and
  sees the driver's death as end-of-file.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

EXECUTE, SHUTDOWN = 1, 2
_HEADER = 10


def verify_tensor_parallel(tp_size: int, hf_config, device: torch.device,
                           model_cls) -> None:
    """Refuse a tensor_parallel_size this model or machine cannot run, naming the fix."""
    if not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1:
        raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {tp_size!r}.")
    if tp_size == 1:
        return
    if not getattr(model_cls, "supports_tensor_parallel", False):
        raise NotImplementedError(
            f"tensor_parallel_size={tp_size}: {model_cls.__name__} does not support tensor "
            "parallelism yet (the Llama family does: Llama, Llama-3, Mistral, Qwen2, Qwen3); use "
            "tensor_parallel_size=1.")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if tp_size > visible:
            raise ValueError(
                f"tensor_parallel_size={tp_size} needs {tp_size} GPUs but {visible} "
                f"{'is' if visible == 1 else 'are'} visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); lower "
                "tensor_parallel_size or expose more devices.")
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or heads
    if heads % tp_size:
        raise ValueError(
            f"tensor_parallel_size={tp_size} does not divide the model's "
            f"num_attention_heads={heads}; use a divisor of {heads}.")
    if (kv >= tp_size and kv % tp_size) or (kv < tp_size and tp_size % kv):
        raise ValueError(
            f"tensor_parallel_size={tp_size} cannot split num_key_value_heads={kv}: it must "
            f"divide them, or be a multiple of them (then each KV head is replicated).")
    inter = getattr(hf_config, "intermediate_size", None)
    if inter is not None and inter % tp_size:
        raise ValueError(f"tensor_parallel_size={tp_size} does not divide the model's "
                         f"intermediate_size={inter}.")


class TensorParallelGroup:
    """One rank's view of the tensor-parallel group: the collectives the model runs."""

    def __init__(self, rank: int, world_size: int, backend: str, device: torch.device,
                 cpu_group):
        self.rank, self.world_size, self.backend, self.device = rank, world_size, backend, device
        self.device_group = dist.group.WORLD
        self.cpu_group = cpu_group
        self.custom_all_reduce = None      # set by init_custom_all_reduce

    def init_custom_all_reduce(self, dtype: torch.dtype, max_bytes: int) -> None:
        """Collective: small all-reduces of `dtype` take the one-shot symmetric-memory path
        (runner/engine/custom_all_reduce.py) where every rank can run it."""
        from runner.engine.custom_all_reduce import build_custom_all_reduce
        self.custom_all_reduce = build_custom_all_reduce(
            self.device_group.group_name, self.rank, self.world_size, self.device, dtype,
            max_bytes, self.min_int)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        ca = self.custom_all_reduce
        if ca is not None and ca.should_use(x):
            return ca.all_reduce(x)
        dist.all_reduce(x, group=self.device_group)
        return x

    def broadcast(self, x: torch.Tensor) -> None:
        """Rank 0's `x` (contiguous) into every rank's, in place."""
        dist.broadcast(x, src=0, group=self.device_group)

    def gather_logits(self, shard: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """[R, V/N] on every rank -> [R, V] (the vocabulary shards side by side)."""
        r, s = shard.shape
        shard = shard.contiguous()
        if self.backend == "nccl":
            out = torch.empty(self.world_size * r, s, dtype=shard.dtype, device=shard.device)
            dist.all_gather_into_tensor(out, shard, group=self.device_group)
            parts = out.view(self.world_size, r, s).unbind(0)
        else:
            parts = [torch.empty_like(shard) for _ in range(self.world_size)]
            dist.all_gather(parts, shard, group=self.device_group)
        return torch.cat(parts, dim=1)[:, :vocab_size]

    def min_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def abort(self) -> None:
        """Unblock collectives stuck on a dead peer (called from the failure monitor)."""
        try:
            self.device_group.abort()
        except Exception:       # gloo fails pending ops on its own when a peer's socket closes
            pass

    def destroy(self, timeout_s: float = 30.0, peers_alive: bool = True) -> bool:
        """Leave the group; returns whether that finished within `timeout_s`.

        Callers destroy their CUDA graphs first: NCCL's teardown waits until every graph that
        captured one of its collectives is gone. With every peer alive, all ranks call this
        together and NCCL finalizes collectively. With a peer gone (`peers_alive=False`, or the
        deadline passed) a collective teardown would wait for it for ever, so NCCL's
        communicators are aborted instead, which needs no peer."""
        if not dist.is_initialized():
            return True
        if self.custom_all_reduce is not None:
            self.custom_all_reduce.close()
            self.custom_all_reduce = None
        done = threading.Event()
        abort_all = getattr(dist.distributed_c10d, "_abort_process_group", None)

        def leave():
            try:
                if not peers_alive and self.backend == "nccl" and abort_all is not None:
                    abort_all()             # aborts every group and forgets them
                else:
                    dist.destroy_process_group()
            except Exception:       # an aborted communicator may refuse: it is gone anyway
                pass
            finally:
                done.set()

        threading.Thread(target=leave, daemon=True, name="tp-destroy").start()
        if done.wait(timeout_s):
            return True
        self.abort()
        return done.wait(5.0)


def init_tensor_parallel(rank: int, world_size: int, init_file: str, device: torch.device,
                         timeout_s: float) -> TensorParallelGroup:
    """Join the group through a file rendezvous (no port to pick or collide on)."""
    if dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is already initialized in this process (another engine with "
            "tensor_parallel_size > 1, or a torchrun launch); shut that engine down first "
            "(LLM.llm_engine.shutdown()) or use tensor_parallel_size=1.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # the executor's monitor fails a step that outlives timeout_s (and kills the workers, which
    # unblocks the driver); the groups' own timeouts stay behind it as a last resort. Without
    # this, torch's NCCL watchdog would tear the whole process down on a timeout.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    timeout = timedelta(seconds=timeout_s + 60)
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=timeout, **kwargs)
    cpu_group = dist.group.WORLD if backend == "gloo" else dist.new_group(
        backend="gloo", timeout=timeout)
    return TensorParallelGroup(rank, world_size, backend, device, cpu_group)


@dataclass
class StepInput:
    """What every rank needs to run one step: the extent of the staged input arrays, the hidden
    rows that need logits (None: all of them, in order) and copy-on-write block pairs."""
    num_tokens: int
    num_seqs: int
    width: int
    rows: Optional[np.ndarray] = None          # [R] int64
    blocks_to_copy: Optional[np.ndarray] = None   # [K, 2] int64 (src, dst)
    # async scheduling: some input ids are tokens the driver sampled on its GPU and has not
    # read back; it broadcasts the step's input ids to the other ranks
    broadcast_input_ids: bool = False
    blocks_to_swap_out: Optional[np.ndarray] = None   # [K, 2] int64 (gpu, cpu)
    blocks_to_swap_in: Optional[np.ndarray] = None    # [K, 2] int64 (cpu, gpu)
    # the first rows are prompt-logprob rows: their logits come in chunks (every rank's
    # logits all-gather takes part in each)
    num_prompt_rows: int = 0


class StepChannel:
    """Driver side: one duplex pipe per worker. `send` writes a step to all of them."""

    def __init__(self, conns: list):
        self.conns = conns

    def send(self, cmd: int, step: Optional[StepInput] = None,
             staged: Optional[list[np.ndarray]] = None) -> None:
        header = np.zeros(_HEADER, np.int64)
        header[0] = cmd
        parts = [header]
        if step is not None:
            rows = step.rows if step.rows is not None else np.zeros(0, np.int64)
            pairs = [np.zeros((0, 2), np.int64) if p is None else p for p in (
                step.blocks_to_copy, step.blocks_to_swap_out, step.blocks_to_swap_in)]
            header[1:10] = (step.num_tokens, step.num_seqs, step.width,
                            -1 if step.rows is None else len(rows), len(pairs[0]),
                            int(step.broadcast_input_ids), len(pairs[1]), len(pairs[2]),
                            step.num_prompt_rows)
            parts += [*staged, rows.astype(np.int64),
                      *(p.astype(np.int64).ravel() for p in pairs)]
        buf = np.concatenate(parts)
        for conn in self.conns:
            conn.send_bytes(buf)


def recv_step(conn, inputs) -> tuple[int, Optional[StepInput]]:
    """Worker side: block until the driver's next message; stage its inputs into `inputs`."""
    flat = np.frombuffer(conn.recv_bytes(), np.int64)
    cmd = int(flat[0])
    if cmd != EXECUTE:
        return cmd, None
    num_tokens, n, width, num_rows, num_copies, broadcast, num_out, num_in, num_prompt = (
        int(v) for v in flat[1:10])
    at = _HEADER + inputs.unpack(num_tokens, n, width, flat[_HEADER:])
    rows = None
    if num_rows >= 0:
        rows = flat[at:at + num_rows].copy()
        at += num_rows
    pairs = []
    for count in (num_copies, num_out, num_in):
        pairs.append(flat[at:at + 2 * count].reshape(count, 2).copy() if count else None)
        at += 2 * count
    return cmd, StepInput(num_tokens, n, width, rows, pairs[0], bool(broadcast), pairs[1],
                          pairs[2], num_prompt)
