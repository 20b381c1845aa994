"""The custom one-shot all-reduce (runner/engine/custom_all_reduce.py): why it is off where it
cannot run (CPU), and on 2 GPUs: the same sums as NCCL for the decode shapes, eager and inside
a CUDA graph, NCCL for what it does not take (float16, tensors over its buffer), and NCCL for a
second group built in the same processes after the first is destroyed (a second engine)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from runner.engine.custom_all_reduce import unavailable_reason


def test_reasons_it_is_off():
    assert "not a GPU" in unavailable_reason(torch.device("cpu"), 2, torch.bfloat16)
    assert "float16" in unavailable_reason(torch.device("cuda", 0), 2, torch.float16)
    assert "world size 3" in unavailable_reason(torch.device("cuda", 0), 3, torch.bfloat16)


def _rank(rank: int, world: int, init_file: str, errors) -> None:
    import torch.distributed as dist

    from runner.engine.distributed import init_tensor_parallel
    try:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        hidden = 4096
        for round_ in range(2):
            tp = init_tensor_parallel(rank, world, f"{init_file}.{round_}", device, 60.0)
            tp.init_custom_all_reduce(torch.bfloat16, 64 * hidden * 2)
            ca = tp.custom_all_reduce
            if round_ == 1:     # a second group in one process: NCCL (see _RENDEZVOUSED)
                assert ca is None
                x = torch.full((8, hidden), rank + 1.0, device=device, dtype=torch.bfloat16)
                assert torch.all(tp.all_reduce(x) == 3)
                tp.destroy()
                continue
            assert ca is not None, "custom all-reduce did not come up"
            gen = torch.Generator(device=device).manual_seed(rank)
            for batch in (1, 3, 64):
                x = torch.randn(batch, hidden, generator=gen, device=device).bfloat16()
                ref = x.clone()
                dist.all_reduce(ref)
                assert ca.should_use(x)
                assert torch.equal(tp.all_reduce(x.clone()), ref)
                # inside a CUDA graph: the replay reads the static input's new values
                static = torch.zeros_like(x)
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    tp.all_reduce(static)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = tp.all_reduce(static)
                static.copy_(x)
                g.replay()
                torch.cuda.synchronize()
                assert torch.equal(out, ref)
                del g
            # what it does not take goes to NCCL, with the same answer
            big = torch.ones(65, hidden, device=device, dtype=torch.bfloat16)
            half = torch.ones(4, hidden, device=device, dtype=torch.float16)
            assert not ca.should_use(big) and not ca.should_use(half)
            assert torch.all(tp.all_reduce(big) == world)
            assert torch.all(tp.all_reduce(half) == world)
            tp.destroy()
    except BaseException as exc:      # the parent reports it
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise


@pytest.mark.multi_gpu
def test_two_gpus_match_nccl(tmp_path):
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    init_file = os.path.join(tmp_path, "rdzv")
    procs = [ctx.Process(target=_rank, args=(r, 2, init_file, errors)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    msgs = []
    while not errors.empty():
        msgs.append(errors.get())
    assert not alive and not msgs and all(p.exitcode == 0 for p in procs), msgs
