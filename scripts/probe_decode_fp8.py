"""Probe: what bounds paged decode attention over an fp8 cache (device only).

Times the production kernel (kernels/paged_decode_attention.py) over bf16, fp8 e4m3 and fp8
e5m2 caches, and a stripped-down single-split copy of it with two alternatives:
  KQ    S^T = K Q^T (the converted K tile is the dot's first operand, no transpose of it;
        P is transposed for the PV dot instead);
  BITS  e4m3 -> fp16 by integer ops on the raw bytes (sign to bit 15, exponent and mantissa
        shifted by 7, the value 2^-8 of the true one; the 2^8 goes into the scale and the
        output) instead of the conversion instruction.
Every variant is checked against the production kernel's output before it is timed.

    python3 scripts/probe_decode_fp8.py [--production]   # --production: the first table only
"""
import importlib
import sys

import torch
import triton
import triton.language as tl

pda = importlib.import_module("kernels.paged_decode_attention")
LOG2E = 1.4426950408889634


@triton.jit
def probe_kernel(q_ptr, kv_ptr, bt_ptr, lens_ptr, out_ptr, qk_scale, out_scale,
                 s_q0, s_q1, s_c0, s_c1, s_c2, s_c3, s_bt, s_o0, s_o1, group,
                 D: tl.constexpr, BS: tl.constexpr, BLOCK_G: tl.constexpr,
                 BLOCK_N: tl.constexpr, KQ: tl.constexpr, BITS: tl.constexpr):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_len = tl.load(lens_ptr + seq)
    g = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, D)
    heads = kvh * group + g
    gm = g < group
    q = tl.load(q_ptr + seq.to(tl.int64) * s_q0 + heads[:, None] * s_q1 + dims[None, :],
                mask=gm[:, None], other=0.0)
    q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)
    qt = tl.trans(q)                                                     # [D, G]
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    bt = bt_ptr + seq.to(tl.int64) * s_bt
    k_base = kv_ptr + kvh.to(tl.int64) * s_c3
    v_base = k_base + s_c0
    for tile in range(0, tl.cdiv(seq_len, BLOCK_N)):
        n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        valid = n < seq_len
        blk = tl.load(bt + n // BS, mask=valid, other=0)
        offs = blk.to(tl.int64) * s_c1 + (n % BS) * s_c2
        kr = tl.load(k_base + offs[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        vr = tl.load(v_base + offs[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        if BITS:
            kx = kr.to(tl.uint16)
            vx = vr.to(tl.uint16)
            k = (((kx & 0x7F) << 7) | ((kx & 0x80) << 8)).to(tl.float16, bitcast=True)
            v = (((vx & 0x7F) << 7) | ((vx & 0x80) << 8)).to(tl.float16, bitcast=True)
        else:
            k = kr.to(tl.float16)
            v = vr.to(tl.float16)
        if KQ:
            st = tl.dot(k, qt) * qk_scale                                # [N, G]
            st = tl.where(valid[:, None], st, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(st, axis=0))
            alpha = tl.exp2(m_i - m_new)
            pt = tl.exp2(st - m_new[None, :])
            l_i = l_i * alpha + tl.sum(pt, axis=0)
            acc = acc * alpha[:, None] + tl.dot(tl.trans(pt.to(tl.float16)), v)
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale                        # [G, N]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    o = acc * out_scale / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_ptr + seq.to(tl.int64) * s_o0 + heads[:, None] * s_o1 + dims[None, :],
             o.to(out_ptr.dtype.element_ty), mask=gm[:, None])


def probe(q, cache, tables, lens, scale, kq, bits, bn, warps, stages):
    B, H, D = q.shape
    hk = cache.shape[3]
    out = torch.empty_like(q)
    raw = cache.view(torch.uint8) if bits else cache
    f = 256.0 if bits else 1.0
    probe_kernel[(B, hk)](q, raw, tables, lens, out, scale * LOG2E * f, f,
                          q.stride(0), q.stride(1), *cache.stride()[:4], tables.stride(0),
                          out.stride(0), out.stride(1), H // hk,
                          D=D, BS=cache.shape[2], BLOCK_G=16, BLOCK_N=bn, KQ=kq, BITS=bits,
                          num_warps=warps, num_stages=stages)
    return out


def main():
    production_only = "--production" in sys.argv
    torch.manual_seed(0)
    for name, B, ctx, hq, hk in [("8B GQA", 512, 384, 32, 8), ("13B MHA", 160, 576, 40, 40),
                                 ("8B GQA long", 64, 2048, 32, 8)]:
        d, bs = 128, 16
        nb = B * (ctx // bs + 1)
        tables = torch.randperm(nb, device="cuda", dtype=torch.int32).view(B, -1)
        lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
        q = torch.randn(B, hq, d, device="cuda", dtype=torch.bfloat16)
        base = torch.randn(2, nb, bs, hk, d, device="cuda")
        print(f"== {name}: batch {B} x {ctx} keys, {hq}/{hk} heads", flush=True)
        for dt in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            cache = base.to(dt)
            nbytes = 2 * B * ctx * hk * d * cache.element_size()
            ms = triton.testing.do_bench(lambda: pda.paged_decode_attention(
                q, cache, tables, lens, 0.088, num_splits=1), return_mode="median")
            print(f"production {str(dt):22s} {ms * 1e3:7.1f} us {nbytes / ms / 1e9:5.2f} TB/s",
                  flush=True)
        if production_only:
            continue
        cache = base.to(torch.float8_e4m3fn)
        nbytes = 2 * B * ctx * hk * d
        ref = pda.paged_decode_attention(q, cache, tables, lens, 0.088, num_splits=1)
        for kq in (False, True):
            for bits in (False, True):
                for bn, w, st in [(64, 2, 2), (64, 4, 2), (64, 4, 3), (128, 4, 2), (32, 2, 2)]:
                    try:
                        out = probe(q, cache, tables, lens, 0.088, kq, bits, bn, w, st)
                        err = (out.float() - ref.float()).abs().max().item()
                        ms = triton.testing.do_bench(lambda: probe(
                            q, cache, tables, lens, 0.088, kq, bits, bn, w, st),
                            return_mode="median")
                        print(f"probe KQ={int(kq)} BITS={int(bits)} N={bn:3d} w={w} s={st}: "
                              f"{ms * 1e3:7.1f} us {nbytes / ms / 1e9:5.2f} TB/s "
                              f"max|diff| {err:.1e}", flush=True)
                    except Exception as e:  # noqa: BLE001 - a probe: report and go on
                        print(f"probe KQ={int(kq)} BITS={int(bits)} N={bn} w={w} s={st}: "
                              f"{type(e).__name__}: {str(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()
