"""kernels/gemv.py against cuBLAS (F.linear) on the decode-step linear layers of Llama-3-8B and
Llama-2-13B, batch M in {1, 2, 4, 8}, plus a tile sweep to pick the heuristic from one run.

Every timing is a CUDA graph of CALLS back-to-back calls (no launch gaps, as in the engine's
captured decode), replayed REPEATS times and timed with CUDA events; the median replay / CALLS
is the time per call. The calls rotate over enough weight copies that the weights together
exceed the 50 MB L2 several times, so every call streams its weight from HBM. Effective
bandwidth = weight bytes / time. Errors are max |y - y_fp32| against an fp32 F.linear, for
gemv and for cuBLAS side by side (both round once to bf16).

    PYTHONPATH=. python3 scripts/bench_gemv.py [--m 1 2 4 8] [--shapes 8b down] [--no-sweep]
        [--csv outputs/bench_gemv.csv]

Standalone: torch + triton only (no hydra, no engine). About 2-3 minutes on an H100: ~680
graph timings and ~55 Triton compiles (each a few tenths of a second to a second).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from kernels.gemv import (FMA_MAX_M, GemvConfig, fma_block_k, gemv, gemv_config, m_pad,
                          pick_split_k)
from kernels.utils import num_sms

SHAPES = {   # name -> (N, K) of the weight, per tensor-parallel rank 1
    "8b.qkv": (6144, 4096), "8b.o_proj": (4096, 4096), "8b.gate_up": (28672, 4096),
    "8b.down": (4096, 14336), "8b.lm_head": (128256, 4096),
    "13b.qkv": (15360, 5120), "13b.o_proj": (5120, 5120), "13b.gate_up": (27648, 5120),
    "13b.down": (5120, 13824), "13b.lm_head": (32000, 5120),
}
# per decode step: 32 / 40 layers of qkv, o_proj, gate_up, down, then one lm_head
LAYERS = {"8b": 32, "13b": 40}

# (block_n, block_k, num_warps, num_stages, use_dot); each is timed unsplit and with
# pick_split_k's split where that is > 1. FMA tiles take M <= FMA_MAX_M and need
# BLOCK_K >= fma_block_k (256 per warp for 16-bit types); num_stages > 1 on an FMA tile
# pipelines the weight through shared memory (cp.async) instead of straight to registers.
TILES = [
    (2, 1024, 4, 1, False), (4, 1024, 4, 1, False), (8, 1024, 4, 1, False),
    (16, 1024, 4, 1, False), (8, 2048, 8, 1, False), (8, 512, 2, 1, False),
    (4, 1024, 4, 3, False), (8, 1024, 4, 3, False),
    (16, 256, 4, 4, True), (32, 128, 4, 3, True), (32, 256, 4, 4, True),
    (64, 128, 4, 4, True), (64, 128, 4, 6, True), (64, 256, 4, 3, True),
    (128, 128, 8, 3, True),
]
MAX_ACC_REGS = 128      # FMA tiles with more fp32 accumulators per thread are skipped

ap = argparse.ArgumentParser()
ap.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8])
ap.add_argument("--shapes", nargs="+", default=list(SHAPES),
                help="names from SHAPES, a model prefix (8b, 13b) or a layer (qkv, down, ...)")
ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
ap.add_argument("--no-sweep", action="store_true", help="time cuBLAS and the heuristic only")
ap.add_argument("--calls", type=int, default=20, help="calls captured per graph")
ap.add_argument("--repeats", type=int, default=7, help="timed graph replays (median)")
ap.add_argument("--min-bytes", type=float, default=400e6,
                help="weight bytes rotated over (L2 is 50 MB)")
ap.add_argument("--csv", default=None, help="write every timing to this CSV file")
args = ap.parse_args()

dtype = getattr(torch, args.dtype)
dev = torch.device("cuda")
SMS = num_sms(dev)
names = [n for n in SHAPES if any(n == s or n.startswith(s + ".") or n.endswith("." + s)
                                  for s in args.shapes)]
print(f"{torch.cuda.get_device_name(dev)}, {SMS} SMs, torch {torch.__version__}, "
      f"{args.dtype}, {args.calls} calls per graph, median of {args.repeats}", flush=True)


def tile_label(cfg: GemvConfig) -> str:
    kind = "dot" if cfg.use_dot else "fma"
    return f"{kind} {cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"


def label(cfg: GemvConfig | None) -> str:
    return "heuristic" if cfg is None else f"{tile_label(cfg)} k{cfg.split_k}"


def candidates(m: int, n: int, k: int) -> list[GemvConfig]:
    out: list[GemvConfig] = []
    for bn, bk, warps, stages, use_dot in TILES:
        if not use_dot and (m > FMA_MAX_M or bk < fma_block_k(dtype, warps) or
                            m_pad(m, False) * bn * bk / (32 * warps) > MAX_ACC_REGS):
            continue
        split = pick_split_k(n, k, bn, bk, SMS)
        for s in sorted({1, split}):
            out.append(GemvConfig(bn, bk, warps, stages, s, use_dot))
    return out


def time_graph(fn, calls: int) -> float:
    """Microseconds per call of fn(i), i = 0..calls-1, captured in one CUDA graph."""
    for i in range(calls):       # compile, and let cuBLAS pick its kernels, before capture
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(times)


rows = []            # dicts: shape, m, config, us, tbs, err
summary = []
t_start = time.time()
hdr = (f"{'shape':12s} {'N x K':>13s} {'M':>2s} | {'cuBLAS us':>9s} {'TB/s':>5s} | "
       f"{'gemv us':>8s} {'TB/s':>5s} {'x':>5s} | {'best sweep config':24s} {'us':>7s} "
       f"{'TB/s':>5s} {'x':>5s} | {'err gemv':>8s} {'cuBLAS':>8s}")
print(hdr)
print("-" * len(hdr), flush=True)
for name in names:
    n, k = SHAPES[name]
    wbytes = n * k * dtype.itemsize
    copies = max(2, math.ceil(args.min_bytes / wbytes))
    gen = torch.Generator(device=dev).manual_seed(0)
    ws = [torch.randn(n, k, device=dev, dtype=dtype, generator=gen) * 0.02
          for _ in range(copies)]
    for m in args.m:
        x = torch.randn(m, k, device=dev, dtype=dtype, generator=gen)
        ref = F.linear(x.float(), ws[0].float())                        # [M, N] fp32
        err_cublas = (F.linear(x, ws[0]).float() - ref).abs().max().item()
        # a wrong kernel is off by O(|y|); rounding differences by at most ~1 bf16 ulp of max|y|
        err_bound = 2 * err_cublas + 2.0 ** -7 * ref.abs().max().item()

        def err_of(cfg):
            return (gemv(x, ws[0], config=cfg).float() - ref).abs().max().item()

        def run(cfg, name=name, m=m):
            us = time_graph(lambda i: gemv(x, ws[i % copies], config=cfg), args.calls)
            err = err_of(cfg)
            rows.append(dict(shape=name, n=n, k=k, m=m,
                             config=label(cfg) if cfg else f"heuristic: {label(heur)}",
                             tile="" if cfg is None else tile_label(cfg),
                             split=0 if cfg is None else cfg.split_k, us=us,
                             tbs=wbytes / us / 1e6, err=err,
                             bad=err > err_bound))
            return us, err

        cublas_us = time_graph(lambda i: F.linear(x, ws[i % copies]), args.calls)
        rows.append(dict(shape=name, n=n, k=k, m=m, config="cuBLAS", tile="", split=0,
                         us=cublas_us, tbs=wbytes / cublas_us / 1e6, err=err_cublas,
                         bad=False))
        heur = gemv_config(m, n, k, dtype, SMS)
        heur_us, heur_err = run(None)
        best_label, best_us = label(heur) + " (h)", heur_us
        if not args.no_sweep:
            for cfg in candidates(m, n, k):
                try:
                    us, err = run(cfg)
                except Exception as e:          # e.g. out of shared memory: skip the config
                    print(f"  {name} M={m} {label(cfg)} failed: {type(e).__name__}: "
                          f"{str(e)[:120]}", flush=True)
                    torch.cuda.synchronize()
                    continue
                if err <= err_bound and us < best_us:
                    best_label, best_us = label(cfg), us
        tb = lambda us: wbytes / us / 1e6                               # noqa: E731
        print(f"{name:12s} {n:6d}x{k:<6d} {m:2d} | {cublas_us:9.1f} {tb(cublas_us):5.2f} | "
              f"{heur_us:8.1f} {tb(heur_us):5.2f} {cublas_us / heur_us:5.2f} | "
              f"{best_label:24s} {best_us:7.1f} {tb(best_us):5.2f} {cublas_us / best_us:5.2f} | "
              f"{heur_err:8.4f} {err_cublas:8.4f}", flush=True)
        summary.append(dict(shape=name, m=m, cublas=cublas_us, heur=heur_us, best=best_us,
                            heur_label=label(heur)))
    ws.clear()                  # free this shape's copies before the next allocates
    torch.cuda.empty_cache()

bad = [r for r in rows if r["bad"]]
if bad:
    print("\nconfigs over the error bound (excluded from 'best'):")
    for r in bad:
        print(f"  {r['shape']} M={r['m']} {r['config']}: err {r['err']:.4f}")

print("\nper M, summed over the shapes above: cuBLAS, the heuristic, each shape's best config,"
      " and the 6 best single tiles (unsplit, or split by pick_split_k where it splits)")
for m in args.m:
    sel = [s for s in summary if s["m"] == m]
    tot = {key: sum(s[key] for s in sel) for key in ("cublas", "heur", "best")}
    print(f"M={m}: cuBLAS {tot['cublas']:.1f}  heuristic {tot['heur']:.1f}  "
          f"per-shape best {tot['best']:.1f} us")
    if args.no_sweep:
        continue
    # (tile, policy) -> {shape: us}; "auto split" falls back to the unsplit time where
    # pick_split_k gives 1 for that shape
    per: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        if r["m"] != m or not r["tile"] or r["bad"]:
            continue
        if r["split"] == 1:
            per.setdefault((r["tile"], "k1"), {})[r["shape"]] = r["us"]
            per.setdefault((r["tile"], "auto"), {}).setdefault(r["shape"], r["us"])
        else:
            per.setdefault((r["tile"], "auto"), {})[r["shape"]] = r["us"]
    splits = {r["tile"] for r in rows if r["m"] == m and r["split"] > 1}
    full = {key: sum(t.values()) for key, t in per.items()
            if len(t) == len(sel) and (key[1] == "k1" or key[0] in splits)}
    for (tile, policy), t in sorted(full.items(), key=lambda kv: kv[1])[:6]:
        print(f"    {tile:22s} {'split auto' if policy == 'auto' else 'no split':10s} "
              f"{t:9.1f} us")

print("\ndecode-step weight time (32/40 layers x qkv, o_proj, gate_up, down + lm_head), ms")
for model, layers in LAYERS.items():
    for m in args.m:
        sel = {s["shape"].split(".")[1]: s for s in summary
               if s["m"] == m and s["shape"].startswith(model + ".")}
        if len(sel) != 5:
            continue
        step = {key: (layers * sum(sel[p][key] for p in ("qkv", "o_proj", "gate_up", "down"))
                      + sel["lm_head"][key]) / 1e3 for key in ("cublas", "heur", "best")}
        print(f"  {model:4s} M={m}: cuBLAS {step['cublas']:.3f}  heuristic {step['heur']:.3f}  "
              f"per-shape best {step['best']:.3f}")

if args.csv:
    os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nall {len(rows)} timings in {args.csv}")
print(f"\ndone in {time.time() - t_start:.0f} s")
