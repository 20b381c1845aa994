"""CUDA graphs for decode steps: capture the model's forward once per batch-size bucket, replay.

A decode step (one query token per sequence) has the same kernels every time; only the input
values change. For each bucket (1, 2, 4, 8, 16, 24, ... up to max_num_seqs) the forward is
captured over static buffers: token ids, positions, slot mapping, block tables sized for
max_seq_len_to_capture, context lengths. A step with n sequences copies its inputs into the
smallest bucket >= n, pads the rest (slot -1: no cache write; context length 1), replays and
reads the first n rows of the static output. Attention kernels size their grids from
max_seq_len_to_capture, never from device values, so the captured launches fit any context up
to it. Steps that do not fit (prefill chunks, more sequences, longer contexts) run eagerly.
Models with `forward_piece` are captured as up to 8 graphs of consecutive layers, replayed in
order (see CUDAGraphRunner.__init__): same kernels, same tokens.
"""
from __future__ import annotations

import logging
import time

import torch

from runner.engine.attention import AttentionMetadata

logger = logging.getLogger("runner.engine")


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len_to_capture: int,
                      batch_sizes: list[int], device: torch.device) -> int:
    """The decode kernel's split count for a step of num_seqs sequences, chosen as the captured
    graph of its bucket chose it, so that eager and graph steps sum in the same order and give
    the same tokens."""
    from kernels.utils import pick_num_splits
    bucket = next((b for b in batch_sizes if b >= num_seqs), num_seqs)
    return pick_num_splits(bucket, num_kv_heads, max_seq_len_to_capture, device)


def capture_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4) if b <= max_num_seqs]
    sizes += list(range(8, max_num_seqs + 1, 8))
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class CUDAGraphRunner:
    def __init__(self, model, kv_caches: list[torch.Tensor], max_num_seqs: int,
                 max_seq_len_to_capture: int, block_size: int, device: torch.device,
                 num_pieces: int = 8, batch_sizes: list[int] | None = None):
        self.model = model
        self.num_kv_heads = kv_caches[0].shape[3]
        self.device = device
        self.kv_caches = kv_caches
        # the buckets (compilation_config's cudagraph_capture_sizes when the user gave them)
        self.batch_sizes = list(batch_sizes) if batch_sizes else capture_batch_sizes(max_num_seqs)
        self.max_bs = self.batch_sizes[-1]
        self.max_seq_len = max_seq_len_to_capture
        self.max_blocks = -(-max_seq_len_to_capture // block_size)
        b = self.max_bs
        self.input_ids = torch.zeros(b, dtype=torch.long, device=device)
        self.positions = torch.zeros(b, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((b,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(b, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(b + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(b, self.max_blocks, dtype=torch.int32, device=device)
        # a model with `forward_piece` is captured in pieces of consecutive layers: launching
        # a graph costs CPU time per node (0.2-1 ms for a 13B step), and the GPU can start on
        # the first piece while the CPU launches the rest. On the H200 the batch-1 gain was
        # within run-to-run noise (docs/benchmarks.md, "Tensor parallelism")
        num_layers = len(kv_caches)
        if hasattr(model, "forward_piece") and num_layers > 1:
            size = -(-num_layers // min(num_pieces, num_layers))
            self.pieces = [range(i, min(i + size, num_layers))
                           for i in range(0, num_layers, size)]
        else:
            self.pieces = None
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], query_start_loc=[], seq_lens=[],
            block_tables=self.block_tables[:bs], max_query_len=1, max_seq_len=self.max_seq_len,
            decode_only=True, query_start_loc_t=self.query_start_loc[:bs + 1],
            seq_lens_t=self.seq_lens[:bs],
            num_splits=decode_num_splits(bs, self.num_kv_heads, self.max_seq_len,
                                         self.batch_sizes, self.device))

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        try:
            for bs in reversed(self.batch_sizes):    # largest first: later ones reuse its pool
                args = (self.input_ids[:bs], self.positions[:bs], self.kv_caches,
                        self._meta(bs))
                self.model(*args)                     # compiles the kernels outside the capture
                torch.cuda.synchronize()
                self.graphs[bs] = []
                if self.pieces is None:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self.outputs[bs] = self.model(*args)
                    self.graphs[bs].append(graph)
                    continue
                # piece j reads piece j-1's (hidden, residual); they replay in this order
                hidden = residual = None
                for layers in self.pieces:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        hidden, residual = self.model.forward_piece(
                            layers, args[0], args[1], hidden, residual, self.kv_caches, args[3])
                    self.graphs[bs].append(graph)
                self.outputs[bs] = hidden
        except BaseException:
            try:                    # no half-captured set outlives the error (see release)
                self.release()
            except Exception:
                pass
            raise
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs (batch sizes up to %d) in %.1f s",
                    len(self.graphs), self.max_bs, time.perf_counter() - t0)

    def release(self) -> None:
        """Destroy the captured graphs. With tensor parallelism this must come before the
        process group is destroyed: NCCL's teardown waits until every graph that captured one of
        its collectives is gone (its persistent references), and would otherwise hang."""
        torch.cuda.synchronize()
        for graphs in self.graphs.values():
            for graph in graphs:
                graph.reset()
        self.graphs.clear()
        self.outputs.clear()

    def can_run(self, meta: AttentionMetadata) -> bool:
        return (meta.decode_only and len(meta.seq_lens) <= self.max_bs
                and meta.max_seq_len <= self.max_seq_len
                and meta.block_tables.shape[1] <= self.max_blocks)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        n = input_ids.shape[0]
        bs = next(b for b in self.batch_sizes if b >= n)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(meta.seq_lens_t, non_blocking=True)
        self.block_tables[:n, :width].copy_(meta.block_tables, non_blocking=True)
        if bs > n:       # padding rows: write no cache slot, attend to one (ignored) key
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(1)
        for graph in self.graphs[bs]:
            graph.replay()
        return self.outputs[bs][:n]
