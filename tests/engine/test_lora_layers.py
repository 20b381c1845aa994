"""LoRALinear (runner/engine/lora/layers.py) on a fused q/k/v layer: the Triton path (the
interpreter on CPU) and the torch path both equal base(x) + scale * x A_i^T B_i^T per part,
computed here from the definition, for a batch of tokens of two slots and none; and (GPU) the
engine with CUDA graphs gives the same tokens for a mixed batch as eager."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.engine.layers.linear import QKVParallelLinear
from runner.engine.lora.batch import LoRABatch
from runner.engine.lora.layers import LoRALinear, LoRAState, part_sizes


@pytest.mark.parametrize("use_triton", [False, True])
def test_lora_linear_on_fused_qkv_equals_the_definition(use_triton):
    torch.manual_seed(0)
    base = QKVParallelLinear(32, 8, 4, 2, bias=True)          # q 32, k 16, v 16 columns
    with torch.no_grad():
        base.weight.normal_()
        base.bias.normal_()
    state = LoRAState(use_triton=use_triton)
    layer = LoRALinear(base, part_sizes(base), max_loras=2, max_rank=8, state=state,
                       dtype=torch.float32, device=torch.device("cpu"))
    sizes = part_sizes(base)
    assert sizes == [32, 16, 16]
    # slot 0: q and v parts, rank 4, scale 2; slot 1: k only, rank 8, scale 0.5
    adapters = {0: ([(torch.randn(4, 32), torch.randn(32, 4)), None,
                     (torch.randn(4, 32), torch.randn(16, 4))], 2.0),
                1: ([None, (torch.randn(8, 32), torch.randn(16, 8)), None], 0.5)}
    for slot, (parts, scale) in adapters.items():
        layer.set_slot(slot, parts, scale)
    batch = LoRABatch(16, 2, torch.device("cpu"))
    seq_slots, qlens = np.array([1, -1, 0, 1]), np.array([3, 2, 4, 1])
    batch.fill(seq_slots, qlens)
    state.batch = batch
    x = torch.randn(int(qlens.sum()), 32)
    y = layer(x)
    want = base(x)
    token_slots = np.repeat(seq_slots, qlens)
    offsets = [0, 32, 48]
    for t, z in enumerate(token_slots):
        if z < 0:
            continue
        parts, scale = adapters[int(z)]
        for (a_b, off, n) in zip(parts, offsets, sizes):
            if a_b is not None:
                a, b = a_b
                want[t, off:off + n] += scale * (x[t] @ a.T) @ b.T
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    state.batch = None                    # no adapter in the step: the base layer alone
    torch.testing.assert_close(layer(x), base(x))
    assert layer.num_heads == base.num_heads      # the base layer's attributes show through


@pytest.mark.gpu
def test_cuda_graphs_with_mixed_adapters_equal_eager(tiny_model_factory, tmp_path):
    from runner.engine import LLM, SamplingParams
    from runner.engine.lora.request import LoRARequest
    from tests.engine.lora_utils import ATTN, MLP, write_adapter

    base = tiny_model_factory("llama_gqa")
    reqs = [None] + [LoRARequest(f"a{i}", i + 1, write_adapter(
        tmp_path / f"a{i}", base, mods, r, 2 * r, seed=i))
        for i, (mods, r) in enumerate([(ATTN, 8), (MLP, 16), (ATTN + MLP, 4)])]
    prompts = ["Paris is the capital of", "Hello", "The quick brown fox", "Numbers 1 2 3"] * 4
    loras = [reqs[i % 4] for i in range(len(prompts))]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    results = {}
    for eager in (True, False):
        llm = LLM(base, enable_lora=True, max_loras=3, max_lora_rank=16, dtype="float32",
                  device="cuda", kernel_backend="triton", enforce_eager=eager,
                  gpu_memory_utilization=0.3, max_model_len=256)
        outs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
        results[eager] = [o.outputs[0].token_ids for o in outs]
        if not eager:
            assert llm.llm_engine.get_stats()["cuda_graph_steps"] > 0
        del llm
    assert results[False] == results[True]
    # the torch reference path agrees too
    llm = LLM(base, enable_lora=True, max_loras=3, max_lora_rank=16, dtype="float32",
              device="cuda", kernel_backend="torch", gpu_memory_utilization=0.3,
              max_model_len=256)
    ref = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False,
                                                        lora_request=loras)]
    assert ref == results[True]
