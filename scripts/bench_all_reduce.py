"""All-reduce latency on this host's GPUs: NCCL vs the engine's custom one-shot all-reduce
(runner/engine/custom_all_reduce.py), for the [batch, hidden] bfloat16 tensors of decode steps,
each timed as a CUDA graph of 50 back-to-back calls (as in a captured decode step). Checks the
custom result against NCCL's, then tears the group down and builds it again in the same
processes (a second engine in one process must work too).

    python3 scripts/bench_all_reduce.py --world-size 2 [--hidden 5120]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _time_graph(fn, x, calls: int = 50, iters: int = 20) -> float:
    """Microseconds per call of fn(x), replayed as one CUDA graph of `calls` calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn(x)
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    del g
    return start.elapsed_time(end) * 1e3 / (iters * calls)


def _rank(rank: int, world: int, hidden: int, init_file: str, rounds: int, q) -> None:
    import logging

    import torch.distributed as dist
    from runner.engine.distributed import init_tensor_parallel
    logging.basicConfig(level=logging.INFO)       # the custom all-reduce says why it is off
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    results = []
    for r in range(rounds):
        if r:                                  # a fresh rendezvous file for the second group
            init_file_r = init_file + f".{r}"
        else:
            init_file_r = init_file
        tp = init_tensor_parallel(rank, world, init_file_r, device, 120.0)
        tp.init_custom_all_reduce(torch.bfloat16, 256 * hidden * 2)
        ca = tp.custom_all_reduce
        row = {"round": r, "custom_all_reduce": ca is not None}
        for batch in (1, 8, 32, 128, 256):
            x = torch.randn(batch, hidden, dtype=torch.bfloat16, device=device) * (rank + 1)
            ref = x.clone()
            dist.all_reduce(ref)
            nccl_us = _time_graph(lambda t: dist.all_reduce(t), x.clone())   # in place
            entry = {"batch": batch, "kib": batch * hidden * 2 / 1024, "nccl_us": nccl_us}
            if ca is not None:
                got = ca.all_reduce(x)
                entry["max_abs_diff_vs_nccl"] = float((got.float() - ref.float()).abs().max())
                entry["custom_us"] = _time_graph(lambda t: ca.all_reduce(t), x)
            row.setdefault("sizes", []).append(entry)
        results.append(row)
        tp.destroy()
    if rank == 0:
        q.put(results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=5120)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    fd, init_file = tempfile.mkstemp(suffix=".rdzv")
    os.close(fd)
    os.unlink(init_file)
    procs = [ctx.Process(target=_rank, args=(r, args.world_size, args.hidden, init_file,
                                             args.rounds, q)) for r in range(args.world_size)]
    for p in procs:
        p.start()
    result = q.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    print("measured:", json.dumps({"world_size": args.world_size, "hidden": args.hidden,
                                   "device": torch.cuda.get_device_name(0),
                                   "torch": torch.__version__, "rounds": result}))


if __name__ == "__main__":
    main()
