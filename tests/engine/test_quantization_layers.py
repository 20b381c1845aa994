"""Quantized linear layers one by one: fused q/k/v and gate/up layers and row-parallel layers
load AWQ, GPTQ (act order too), fp8 (per-tensor scales, static input scales), compressed-tensors
and online-fp8 tensors, whole or as tensor-parallel shards read lazily from a safetensors file,
and give dequantize-then-matmul's result: the ranks' column slices put together, or their row
partial sums added, equal the single-rank layer. Also the layout conversions themselves (AWQ's
interleaved nibbles, GPTQ's act-order sort) and fused parts that disagree on g_idx."""
from __future__ import annotations

import pytest
import torch

from runner.engine.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear,
                                         RowParallelLinear)
from runner.engine.model_loader import safetensors_weights_iterator
from runner.engine.quantization.awq import AWQConfig, unpack_awq
from runner.engine.quantization.compressed_tensors import CompressedTensorsConfig
from runner.engine.quantization.fp8 import Fp8Config
from runner.engine.quantization.gptq import GPTQConfig
from tests.engine.test_quantization import (CT_CFG, awq_pack, fake_quant_fp8, fp8_per_channel,
                                            fp8_per_tensor, gptq_pack_cols, gptq_pack_rows,
                                            quantize_int4)

MAPPING = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
HIDDEN, HEAD_DIM, HEADS, KV_HEADS, INTER = 64, 16, 4, 2, 96


def _config(method: str):
    cfg = {"awq": lambda: AWQConfig(4, 16, True),
           "gptq": lambda: GPTQConfig(4, 16, False, False),
           "gptq_act_order": lambda: GPTQConfig(4, 16, True, True),
           "gptq_per_channel": lambda: GPTQConfig(4, -1, False, True, "gptq_v2"),
           "fp8": lambda: Fp8Config(serialized=True),
           "fp8_static": lambda: Fp8Config(serialized=True, activation_scheme="static"),
           "compressed_tensors": lambda: CompressedTensorsConfig.from_config(CT_CFG),
           "online_fp8": lambda: Fp8Config()}[method]()
    cfg.packed_modules_mapping = MAPPING
    return cfg


def _part_tensors(method: str, w: torch.Tensor, order: torch.Tensor, index: int):
    """One checkpoint part (a [N, K] float weight) in `method`'s layout -> (tensors by
    parameter name, the dequantized weight, the static input scale or None)."""
    if method == "awq":
        q, s, z, w_dq = quantize_int4(w, 16)
        return {"qweight": awq_pack(q), "qzeros": awq_pack(z), "scales": s}, w_dq, None
    if method.startswith("gptq"):
        group = -1 if method == "gptq_per_channel" else 16
        k = w.shape[1]
        g = (order // 16).int() if method == "gptq_act_order" else \
            (torch.arange(k) // (k if group == -1 else group)).int()
        sym = method != "gptq"
        q, s, z, w_dq = quantize_int4(w, k if group == -1 else 16, g, sym=sym, min_zero=1)
        zeros = z - 1 if method == "gptq" else z                         # v1 stores zero - 1
        return {"qweight": gptq_pack_rows(q), "qzeros": gptq_pack_cols(zeros), "scales": s,
                "g_idx": g}, w_dq, None
    if method in ("fp8", "fp8_static"):
        q, s, w_dq = fp8_per_tensor(w)
        t = {"weight": q, "weight_scale": s}
        scale = None
        if method == "fp8_static":
            scale = torch.tensor(0.03 + 0.02 * index)
            t["input_scale"] = scale
        return t, w_dq, scale
    if method == "compressed_tensors":
        q, s, w_dq = fp8_per_channel(w)
        return {"weight": q, "weight_scale": s}, w_dq, None
    from runner.engine.quantization.fp8 import quantize_weight_per_channel
    wq, s = quantize_weight_per_channel(w)
    return {"weight": w}, wq.float() * s[:, None], None


def _parts(kind: str):
    if kind == "qkv":
        return [("q", HEADS * HEAD_DIM), ("k", KV_HEADS * HEAD_DIM), ("v", KV_HEADS * HEAD_DIM)]
    if kind == "gate_up":
        return [(0, INTER), (1, INTER)]
    return [(None, HIDDEN)]


def _build(kind: str, method: str, tp_rank: int, tp_size: int):
    cfg = _config(method)
    if kind == "qkv":
        return QKVParallelLinear(HIDDEN, HEAD_DIM, HEADS, KV_HEADS, bias=True, tp_rank=tp_rank,
                                 tp_size=tp_size, quant_config=cfg, prefix="l.qkv_proj")
    if kind == "gate_up":
        return MergedColumnParallelLinear(HIDDEN, [INTER, INTER], tp_rank=tp_rank,
                                          tp_size=tp_size, quant_config=cfg,
                                          prefix="l.gate_up_proj")
    return RowParallelLinear(INTER, HIDDEN, tp_rank=tp_rank, tp_size=tp_size,
                             quant_config=cfg, prefix="l.down_proj")


@pytest.mark.parametrize("method", ["awq", "gptq", "gptq_act_order", "gptq_per_channel", "fp8",
                                    "fp8_static", "compressed_tensors", "online_fp8"])
@pytest.mark.parametrize("kind", ["qkv", "gate_up", "row"])
def test_sharded_layers_equal_dequantize_then_matmul(method, kind, tmp_path):
    from safetensors.torch import save_file
    gen = torch.Generator().manual_seed(0)
    k = INTER if kind == "row" else HIDDEN
    order = torch.argsort(torch.randperm(k, generator=gen))       # act order, shared by parts
    tensors, dq, scales = {}, [], []
    for i, (shard, n) in enumerate(_parts(kind)):
        t, w_dq, scale = _part_tensors(method, torch.randn(n, k, generator=gen) / k ** 0.5,
                                       order, i)
        tensors.update({f"{shard}.{name}": v.contiguous() for name, v in t.items()})
        if kind == "qkv":
            tensors[f"{shard}.bias"] = torch.randn(n, generator=gen)
        dq.append(w_dq)
        scales.append(scale)
    path = str(tmp_path / "layer.safetensors")
    save_file(tensors, path)
    x = torch.randn(5, k, generator=gen)
    w = torch.cat(dq)                                                    # [N, K]
    xin = x if scales[0] is None and "fp8" not in method and method != "compressed_tensors" \
        else fake_quant_fp8(x, None if scales[0] is None else max(s.item() for s in scales))
    want = xin @ w.t()
    if kind == "row" and method in ("fp8", "compressed_tensors", "online_fp8"):
        # each rank rounds its own slice of every token (per-token scales of the slices), and
        # online fp8 scales each rank's slice of a weight row by its own maximum
        halves = [slice(0, k // 2), slice(k // 2, k)]
        if method == "online_fp8":
            from runner.engine.quantization.fp8 import quantize_weight_per_channel
            raw = tensors["None.weight"]
            w = torch.cat([wq.float() * s[:, None] for wq, s in
                           (quantize_weight_per_channel(raw[:, h]) for h in halves)], dim=1)
        want = sum(fake_quant_fp8(x[:, h]) @ w[:, h].t() for h in halves)
    if kind == "qkv":
        want = want + torch.cat([tensors[f"{s}.bias"] for s, _ in _parts(kind)])

    outs = []
    for tp_rank in range(2):
        layer = _build(kind, method, tp_rank, 2)
        for name, tensor in safetensors_weights_iterator([path], lazy=True):
            shard, pname = name.split(".")
            param = getattr(layer, pname)
            layer.weight_loader(param, tensor, None if shard == "None" else
                                (int(shard) if shard.isdigit() else shard))
        layer.process_weights_after_loading()
        outs.append(layer(x if kind != "row" else x[:, tp_rank * k // 2:(tp_rank + 1) * k // 2]))
    if kind == "row":
        got = outs[0] + outs[1]
    else:
        # each rank holds its half of every part: reassemble part by part
        halves = [n // 2 for _, n in _parts(kind)]
        offsets = [sum(halves[:i]) for i in range(len(halves))]
        got = torch.cat([outs[r][:, o:o + h] for o, h in zip(offsets, halves)
                         for r in range(2)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_awq_unpack_reverses_the_interleaved_order():
    cols = torch.arange(16).remainder(16).view(1, 16).repeat(3, 1)     # column c holds c
    assert torch.equal(unpack_awq(awq_pack(cols)), cols.int())
    word = awq_pack(torch.arange(8).view(1, 8))[0, 0].item() & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]


def test_act_order_sorts_rows_and_keeps_the_gather():
    """A single-rank GPTQ act-order layer: rows sorted by group (contiguous groups, so no
    per-row group lookups), x gathered through perm."""
    gen = torch.Generator().manual_seed(1)
    k, n = 64, 16
    order = torch.argsort(torch.randperm(k, generator=gen))
    t, w_dq, _ = _part_tensors("gptq_act_order", torch.randn(n, k, generator=gen), order, 0)
    layer = RowParallelLinear(k, n, quant_config=_config("gptq_act_order"), prefix="o_proj")
    for name, v in t.items():
        layer.weight_loader(getattr(layer, name), v)
    layer.process_weights_after_loading()
    assert layer.g_idx is None and layer.perm is not None and layer.int4_group_size == 16
    x = torch.randn(3, k, generator=gen)
    torch.testing.assert_close(layer(x), x @ w_dq.t(), atol=1e-5, rtol=1e-5)


def test_fused_parts_must_share_g_idx():
    layer = MergedColumnParallelLinear(HIDDEN, [32, 32], quant_config=_config("gptq_act_order"),
                                       prefix="mlp.gate_up_proj")
    g = (torch.randperm(HIDDEN) // 16).int()
    layer.weight_loader(layer.g_idx, g, 0)
    layer.weight_loader(layer.g_idx, g.clone(), 1)
    with pytest.raises(ValueError, match="per-input tensors differ"):
        layer.weight_loader(layer.g_idx, torch.roll(g, 1), 1)


def test_partitions_that_split_groups_are_refused():
    with pytest.raises(ValueError, match="not a multiple of group_size=16"):
        RowParallelLinear(48, 16, tp_rank=0, tp_size=2, quant_config=_config("awq"),
                          prefix="o_proj")
    with pytest.raises(ValueError, match="multiples of 8"):
        MergedColumnParallelLinear(HIDDEN, [20, 20], quant_config=_config("awq"),
                                   prefix="gate_up_proj")
