"""cpu_offload_gb: offloaded layers stream through two rotating slots and the model computes
what it computes without offloading, pass after pass (odd and even numbers of offloaded layers,
all of them, one, a quantized model, a pass that stopped half-way); on a CPU device the engine
leaves the model as it is and says so (vLLM's offloader does nothing there either); on CUDA
(gpu marker) the engine's tokens with cpu_offload_gb equal those without."""
from __future__ import annotations

import logging

import pytest
import torch

from runner.engine import LLM, SamplingParams
from runner.engine.attention import AttentionMetadata
from runner.engine.config import EngineArgs
from runner.engine.layers.offload import LayerOffloader, offload_model, param_bytes
from runner.engine.model_loader import get_model, process_weights_after_loading
from tests.engine.test_quantization import AWQ_CFG, llama_config

NUM_LAYERS = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("offload")
    cfg = llama_config()
    cfg.num_hidden_layers = NUM_LAYERS
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(path)
    awq = path / "awq"
    cfg.quantization_config = AWQ_CFG
    cfg.save_pretrained(awq)
    return path


def _model(path, device="cpu"):
    mc = EngineArgs(model=str(path), load_format="dummy", device=device,
                    skip_tokenizer_init=True).create_configs().model_config
    return get_model(mc, torch.device(device))


def _forward(model, num_tokens=9, pieces=None):
    positions = torch.arange(num_tokens)
    ids = torch.randint(3, 300, (num_tokens,), generator=torch.Generator().manual_seed(0))
    caches = [torch.zeros(2, 4, 4, model.num_kv_heads, model.head_dim)
              for _ in range(model.num_layers)]
    meta = AttentionMetadata(
        slot_mapping=positions.clone(), query_start_loc=[0, num_tokens], seq_lens=[num_tokens],
        block_tables=torch.tensor([[0, 1, 2]], dtype=torch.int32), max_query_len=num_tokens,
        max_seq_len=num_tokens, prefill_idx=(0,))
    with torch.inference_mode():
        if pieces is not None:
            return model.forward_piece(pieces, ids, positions, None, None, caches, meta)
        return model(ids, positions, caches, meta)


@pytest.mark.parametrize("num_offloaded", [1, 2, 3, 4, NUM_LAYERS])
@pytest.mark.parametrize("quantized", [False, True], ids=["bf16", "awq"])
def test_streamed_layers_compute_the_same(folder, num_offloaded, quantized):
    path = folder / "awq" if quantized else folder
    plain, model = _model(path), _model(path)
    want = _forward(plain)
    layers = model.model.layers
    budget = sum(param_bytes(layers[i]) for i in range(num_offloaded - 1)) + 1
    off = offload_model(model, torch.device("cpu"), budget, process_weights_after_loading)
    assert len(off.layers) == num_offloaded and off.num_slots == min(2, num_offloaded)
    # layers p and p + 2 read the same slot memory; the rest keep their own tensors
    ptrs = [next(layers[i].parameters()).data_ptr() for i in range(NUM_LAYERS)]
    if num_offloaded >= 3:
        assert ptrs[0] == ptrs[2] != ptrs[1]
    assert len(set(ptrs)) == NUM_LAYERS - num_offloaded + off.num_slots
    for _ in range(3):                       # passes wrap around the rotation
        assert torch.equal(_forward(model), want)
    # a pass that stopped after two layers leaves the slots out of order: the next heals
    _forward(model, pieces=range(0, 2))
    assert torch.equal(_forward(model), want)


def test_offloader_copies_each_layer_into_its_slot():
    layers = [torch.nn.Linear(4, 4, bias=False) for _ in range(3)]
    for i, layer in enumerate(layers):
        layer.weight.data.fill_(float(i))
    off = LayerOffloader(torch.device("cpu"))
    for layer in layers:
        off.add(layer)
    off.finish()
    x = torch.ones(1, 4)
    outs = [[layer(x)[0, 0].item() for layer in layers] for _ in range(2)]
    assert outs == [[0.0, 4.0, 8.0]] * 2


def test_cpu_device_leaves_the_model_alone_and_says_so(folder, caplog):
    prompts = [{"prompt_token_ids": [5, 6, 7, 8]}]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    base = LLM(str(folder), load_format="dummy", skip_tokenizer_init=True, max_model_len=64)
    with caplog.at_level(logging.WARNING, logger="runner.engine"):
        llm = LLM(str(folder), load_format="dummy", skip_tokenizer_init=True, max_model_len=64,
                  cpu_offload_gb=1)
    assert "nothing is offloaded" in caplog.text
    assert not hasattr(llm.llm_engine.executor.model_runner.model, "cpu_offloader")
    assert llm.generate(prompts, params, use_tqdm=False)[0].outputs[0].token_ids == \
        base.generate(prompts, params, use_tqdm=False)[0].outputs[0].token_ids


@pytest.mark.gpu
@pytest.mark.parametrize("quantized", [False, True], ids=["bf16", "awq"])
def test_gpu_offloaded_tokens_equal(folder, quantized):
    path = str(folder / "awq" if quantized else folder)
    prompts = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (3, 17, 40)]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    kw = dict(load_format="dummy", skip_tokenizer_init=True, max_model_len=128,
              dtype="bfloat16", gpu_memory_utilization=0.3)
    base = [o.outputs[0].token_ids
            for o in LLM(path, **kw).generate(prompts, params, use_tqdm=False)]
    llm = LLM(path, cpu_offload_gb=1e-4, **kw)
    model = llm.llm_engine.executor.model_runner.model
    off = model.cpu_offloader
    assert len(off.layers) >= 1 and off.host[0].is_pinned()
    assert llm.llm_engine.config.enforce_eager
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == base
