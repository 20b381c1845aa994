"""LoRA adapters in the engine against PEFT: greedy tokens with an adapter equal HF transformers'
with the adapter merged into the weights by PEFT (float32, CPU), for several target-module sets
and ranks (attention only, MLP only, all seven projections with rsLoRA); a batch mixing three
adapters and the base model equals each run alone, also when the adapters must take turns in
fewer slots (max_loras) and host cache entries (max_cpu_loras); prefix caching keeps adapters'
KV apart; bad adapter folders and a lora_request without enable_lora fail naming the fix."""
from __future__ import annotations

import json
import os

import pytest

from runner.engine import LLM, SamplingParams
from runner.engine.lora.request import LoRARequest
from tests.engine.lora_utils import ATTN, MLP, peft_merged_greedy, write_adapter

# long enough that their blocks (block_size 4) fill and could be shared through the prefix cache
PROMPTS = ["Paris is the capital of a country in the north of", "Hello", "The quick brown fox"]
MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)

# (name, target modules, rank, lora_alpha, use_rslora)
ADAPTERS = [
    ("attn_r8", ("q_proj", "v_proj"), 8, 16, False),
    ("mlp_r4", MLP, 4, 8, False),
    ("all_r16_rslora", ATTN + MLP, 16, 32, True),
]


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory):
    base = tiny_model_factory("llama_gqa")
    root = tmp_path_factory.mktemp("adapters")
    folders = {name: write_adapter(root / name, base, mods, r, alpha, seed=i + 1,
                                   use_rslora=rs)
               for i, (name, mods, r, alpha, rs) in enumerate(ADAPTERS)}
    refs = {name: peft_merged_greedy(base, path, PROMPTS, MAX_TOKENS)
            for name, path in folders.items()}
    refs[None] = peft_merged_greedy(base, None, PROMPTS, MAX_TOKENS)
    requests = {name: LoRARequest(name, i + 1, folders[name]) for i, name in enumerate(folders)}
    return base, folders, refs, requests


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_each_adapter_equals_peft_merged(setup):
    base, _, refs, requests = setup
    llm = LLM(base, enable_lora=True, max_lora_rank=16, max_loras=1, max_cpu_loras=3,
              block_size=4, max_model_len=128)
    for name, req in requests.items():
        assert refs[name] != refs[None]          # the adapter changes the tokens
        assert tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=req)) == \
            refs[name], name
    assert tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == refs[None]
    # loaded once each, on first use
    assert llm.llm_engine.executor.model_runner.lora_manager.stats["num_adapter_loads"] == 3


@pytest.mark.parametrize("max_loras,max_cpu_loras", [(3, None), (2, 2), (1, 1)])
def test_mixed_batch_equals_each_alone(setup, max_loras, max_cpu_loras):
    """Three adapters and the base, every prompt under each, in one generate call: equal to
    each alone (PEFT's tokens); with fewer slots than adapters the scheduler lets them take
    turns, and the host cache evicts and reloads."""
    base, _, refs, requests = setup
    llm = LLM(base, enable_lora=True, max_lora_rank=16, max_loras=max_loras,
              max_cpu_loras=max_cpu_loras, block_size=4, max_model_len=128,
              max_num_batched_tokens=64)
    names = [None, *requests]
    prompts = [p for _ in names for p in PROMPTS]
    loras = [None if n is None else requests[n] for n in names for _ in PROMPTS]
    got = tokens(llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=loras))
    for k, n in enumerate(names):
        assert got[k * len(PROMPTS):(k + 1) * len(PROMPTS)] == refs[n], n
    manager = llm.llm_engine.executor.model_runner.lora_manager
    assert len(manager._slots) <= max_loras and len(manager._cache) <= manager.config.max_cpu_loras


def test_a_shared_lora_request_and_chat(setup):
    base, _, refs, requests = setup
    llm = LLM(base, enable_lora=True, max_lora_rank=16, block_size=4, max_model_len=128)
    req = requests["mlp_r4"]
    # one LoRARequest for all prompts, given by keyword as in vLLM
    assert tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=req)) == \
        refs["mlp_r4"]
    msgs = [{"role": "user", "content": "Hi"}]
    with_lora = llm.chat(msgs, GREEDY, use_tqdm=False, lora_request=req)
    prompt_ids = with_lora[0].prompt_token_ids
    alone = llm.generate({"prompt_token_ids": prompt_ids}, GREEDY, use_tqdm=False,
                         lora_request=req)
    assert tokens(with_lora) == tokens(alone)
    assert tokens(with_lora) != tokens(llm.chat(msgs, GREEDY, use_tqdm=False))
    with pytest.raises(ValueError, match="2 lora_requests for 3 prompts"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=[req, req])


def test_prefix_cache_keeps_adapters_apart(setup):
    """The same prompt under the base and an adapter, one after the other: the second must not
    take the first's cached KV blocks."""
    base, _, refs, requests = setup
    llm = LLM(base, enable_lora=True, max_lora_rank=16, block_size=4, max_model_len=128)
    def hits():
        return llm.llm_engine.get_stats()["prefix_cache_hits"]

    assert tokens(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)) == refs[None][:1]
    req = requests["attn_r8"]
    assert tokens(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, lora_request=req)) == \
        refs["attn_r8"][:1]
    assert hits() == 0
    # the adapter's own blocks are reused by its next request, the base's by the base
    assert tokens(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, lora_request=req)) == \
        refs["attn_r8"][:1]
    after_lora = hits()
    assert after_lora > 0
    assert tokens(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)) == refs[None][:1]
    assert hits() > after_lora


# ------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def lora_llm(setup):
    base = setup[0]
    return LLM(base, enable_lora=True, max_lora_rank=16, block_size=4, max_model_len=128)


def test_missing_adapter_config(setup, lora_llm, tmp_path):
    folder = write_adapter(tmp_path / "a", setup[0], ("q_proj",), 4, 8, seed=3)
    os.remove(os.path.join(folder, "adapter_config.json"))
    with pytest.raises(ValueError, match="adapter_config.json is missing.*save_pretrained"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False,
                          lora_request=LoRARequest("a", 11, folder))
    with pytest.raises(ValueError, match="no such folder"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False,
                          lora_request=LoRARequest("b", 12, str(tmp_path / "nowhere")))
    assert not lora_llm.llm_engine.has_unfinished_requests()


def test_rank_above_max_lora_rank(setup, lora_llm, tmp_path):
    folder = write_adapter(tmp_path / "big", setup[0], ("q_proj",), 32, 8, seed=3)
    with pytest.raises(ValueError, match=r"rank r=32 is above max_lora_rank=16; raise "
                                         r"max_lora_rank .*max_lora_rank=32"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False,
                          lora_request=LoRARequest("big", 13, folder))


def test_unknown_target_module(setup, lora_llm, tmp_path):
    folder = write_adapter(tmp_path / "u", setup[0], ("q_proj",), 4, 8, seed=3,
                           config_extra={"target_modules": ["q_proj", "lm_head"]})
    with pytest.raises(ValueError, match=r"\['lm_head'\] have no LoRA layer.*supported target "
                                         r"modules are \['down_proj', 'gate_proj', 'k_proj', "
                                         r"'o_proj', 'q_proj', 'up_proj', 'v_proj'\]"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("u", 14, folder))
    # a tensor for a module that is not a LoRA layer, whatever the config says
    from safetensors.torch import load_file, save_file
    st = os.path.join(folder, "adapter_model.safetensors")
    t = load_file(st)
    t["base_model.model.model.layers.0.input_layernorm.lora_A.weight"] = \
        t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].clone()
    t["base_model.model.model.layers.0.input_layernorm.lora_B.weight"] = \
        t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].clone()
    save_file(t, st)
    cfg = json.load(open(os.path.join(folder, "adapter_config.json")))
    cfg["target_modules"] = ["q_proj"]
    json.dump(cfg, open(os.path.join(folder, "adapter_config.json"), "w"))
    with pytest.raises(ValueError, match="input_layernorm' has no LoRA layer"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("v", 15, folder))


def test_unsupported_peft_options_and_mismatched_shapes(setup, lora_llm, tmp_path):
    folder = write_adapter(tmp_path / "d", setup[0], ("q_proj",), 4, 8, seed=3,
                           config_extra={"use_dora": True})
    with pytest.raises(NotImplementedError, match="use_dora"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("d", 16, folder))
    # an adapter of another base model (other widths)
    other = write_adapter(tmp_path / "o", setup[0], ("q_proj",), 4, 8, seed=3)
    from safetensors.torch import load_file, save_file
    import torch
    st = os.path.join(other, "adapter_model.safetensors")
    t = {k: torch.zeros(4, 99) if "lora_A" in k else v for k, v in load_file(st).items()}
    save_file(t, st)
    with pytest.raises(ValueError, match="do not fit the base layer"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("o", 17, other))


def test_lora_request_without_enable_lora(setup):
    base, folders, _, requests = setup
    llm = LLM(base, block_size=4, max_model_len=128)
    with pytest.raises(ValueError, match="LoRA is off; build the engine with enable_lora=True"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=requests["attn_r8"])
    assert not llm.llm_engine.has_unfinished_requests()


def test_engine_argument_checks(setup):
    base = setup[0]
    with pytest.raises(ValueError, match=r"max_lora_rank must be one of \[1, 8, 16"):
        LLM(base, enable_lora=True, max_lora_rank=12)
    with pytest.raises(ValueError, match=r"max_cpu_loras \(1\) must be an integer >= max_loras"):
        LLM(base, enable_lora=True, max_loras=2, max_cpu_loras=1)
    with pytest.raises(ValueError, match="lora_int_id must be an integer > 0"):
        LoRARequest("x", 0, "/tmp/x")
    with pytest.raises(ValueError, match="lora_path is empty"):
        LoRARequest("x", 1, "")
    assert LoRARequest("x", 1, "/a") == LoRARequest("x", 2, "/b")     # vLLM: by name


def test_one_id_two_adapters_is_an_error(setup, lora_llm):
    _, folders, _, _ = setup
    lora_llm.generate("Hi", GREEDY, use_tqdm=False,
                      lora_request=LoRARequest("first", 21, folders["attn_r8"]))
    with pytest.raises(ValueError, match="lora_int_id 21 is adapter 'first'.*its own lora_int_id"):
        lora_llm.generate("Hi", GREEDY, use_tqdm=False,
                          lora_request=LoRARequest("second", 21, folders["mlp_r4"]))


def test_a_folder_saved_by_peft_and_beam_search_equal_the_merged_model(tiny_model_factory,
                                                                        tmp_path):
    """PEFT's own save_pretrained output loads; beam search and seeded sampling with the
    adapter equal the engine on the PEFT-merged model saved as a plain folder."""
    from runner.engine import BeamSearchParams
    from tests.engine.lora_utils import merged_model_folder, peft_saved_adapter

    base = tiny_model_factory("qwen2")           # q/k/v biases, tied embeddings
    adapter = peft_saved_adapter(tmp_path / "peft", base, ("q_proj", "k_proj", "o_proj",
                                                           "gate_proj"), 8, 8, seed=9)
    merged = merged_model_folder(tmp_path / "merged", base, adapter)
    kw = dict(block_size=4, max_model_len=128)
    lora_llm = LLM(base, enable_lora=True, **kw)
    ref_llm = LLM(merged, **kw)
    req = LoRARequest("peft", 1, adapter)
    beams = BeamSearchParams(beam_width=3, max_tokens=8)
    got = lora_llm.beam_search([{"prompt": p} for p in PROMPTS], beams, lora_request=req)
    want = ref_llm.beam_search([{"prompt": p} for p in PROMPTS], beams)
    assert [[s.tokens for s in o.sequences] for o in got] == \
        [[s.tokens for s in o.sequences] for o in want]
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=3, n=2, max_tokens=8)
    assert [[c.token_ids for c in o.outputs] for o in lora_llm.generate(
        PROMPTS, sampled, use_tqdm=False, lora_request=req)] == \
        [[c.token_ids for c in o.outputs] for o in ref_llm.generate(PROMPTS, sampled,
                                                                    use_tqdm=False)]
    base_tokens = tokens(lora_llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    assert tokens(lora_llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=req)) == \
        tokens(ref_llm.generate(PROMPTS, GREEDY, use_tqdm=False)) != base_tokens


def test_mixed_batch_on_the_triton_kernels(setup):
    """kernel_backend='triton' (the interpreter on CPU): the LoRA shrink/expand kernels inside
    the engine, two adapters and the base in one batch, give PEFT's tokens."""
    base, _, refs, requests = setup
    llm = LLM(base, enable_lora=True, max_lora_rank=16, max_loras=2, block_size=4,
              max_model_len=64, kernel_backend="triton", max_num_batched_tokens=16)
    names = [None, "attn_r8", "all_r16_rslora"]
    prompts = [p for _ in names for p in PROMPTS[1:]]
    loras = [None if n is None else requests[n] for n in names for _ in PROMPTS[1:]]
    short = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    got = tokens(llm.generate(prompts, short, use_tqdm=False, lora_request=loras))
    assert llm.llm_engine.get_stats()["kernel_backend"] == "triton"
    want = [r[:4] for n in names for r in refs[n][1:]]
    assert got == want


def test_the_graph_mode_data_flow_on_the_cpu(setup):
    """What CUDA graphs rely on, without a GPU: after prepare_capture every forward reads the
    fixed segment buffers (cleared for base-only steps, refilled in place otherwise), and the
    buffers and slot tensors never move."""
    base, _, refs, requests = setup
    llm = LLM(base, enable_lora=True, max_lora_rank=16, max_loras=2, block_size=4,
              max_model_len=128)
    manager = llm.llm_engine.executor.model_runner.lora_manager
    manager.prepare_capture()
    batch = manager.batch
    addresses = [batch.sorted_token_ids.data_ptr(), batch.num_tokens_per_slot.data_ptr(),
                 batch.slot_start.data_ptr()] + [
        t.data_ptr() for layer in manager.layers.values() for t in (layer.lora_a, layer.lora_b)]
    assert tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == refs[None]
    names = [None, *requests]
    prompts = [p for _ in names for p in PROMPTS]
    loras = [None if n is None else requests[n] for n in names for _ in PROMPTS]
    got = tokens(llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=loras))
    assert got == [r for n in names for r in refs[n]]
    assert manager.state.batch is batch
    assert addresses == [batch.sorted_token_ids.data_ptr(), batch.num_tokens_per_slot.data_ptr(),
                         batch.slot_start.data_ptr()] + [
        t.data_ptr() for layer in manager.layers.values() for t in (layer.lora_a, layer.lora_b)]
