"""The LLM front end: prompt forms, stop conditions, hub loading, and every bad-input error."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from runner.engine import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_model_factory):
    return LLM(tiny_model_factory("llama"), max_model_len=96, max_num_batched_tokens=64)


GREEDY = dict(temperature=0, max_tokens=12, ignore_eos=True)


def test_prompt_forms_and_order(llm):
    tok = llm.get_tokenizer()
    ids = tok("Hello world").input_ids
    outs = llm.generate(["Hello world", {"prompt": "Hello world"}, {"prompt_token_ids": ids}],
                        SamplingParams(**GREEDY), use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == [ids, ids, ids]
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids == \
        outs[2].outputs[0].token_ids
    assert outs[2].prompt is None
    # per-prompt params, results in prompt order
    outs = llm.generate(["a", "b", "c"], [SamplingParams(temperature=0, max_tokens=k,
                                                         ignore_eos=True) for k in (3, 1, 2)],
                        use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 1, 2]
    assert "RequestOutput(request_id=" in repr(outs[0]) and "CompletionOutput(index=0" in \
        repr(outs[0])


def test_text_equals_tokenizer_decode(llm):
    out = llm.generate("The river flows", SamplingParams(temperature=0.8, seed=3,
                                                         max_tokens=30, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    tok = llm.get_tokenizer()
    assert out.text == tok.decode(out.token_ids, skip_special_tokens=True)


def test_stop_strings_stop_token_ids_min_tokens(llm):
    tok = llm.get_tokenizer()
    base = llm.generate("Paris is", SamplingParams(**GREEDY), use_tqdm=False)[0].outputs[0]
    text = base.text
    # a stop string taken from the middle of the greedy text: output is cut before it
    stop = text[4:7]
    assert stop and text.find(stop) >= 0
    cut = llm.generate("Paris is", SamplingParams(**GREEDY, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[:text.find(stop)]
    incl = llm.generate("Paris is", SamplingParams(**GREEDY, stop=[stop],
                                                   include_stop_str_in_output=True),
                        use_tqdm=False)[0].outputs[0]
    assert incl.text == text[:text.find(stop) + len(stop)]
    # stop_token_ids: stops at the first occurrence of the 4th greedy token, kept in token_ids
    target = base.token_ids[3]
    first = base.token_ids.index(target)
    out = llm.generate("Paris is", SamplingParams(**GREEDY, stop_token_ids=[target]),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target
    # min_tokens: the stop token is masked until min_tokens are out
    out = llm.generate("Paris is", SamplingParams(**GREEDY, stop_token_ids=[target],
                                                  min_tokens=first + 2),
                       use_tqdm=False)[0].outputs[0]
    assert target not in out.token_ids[:first + 2]
    assert len(out.token_ids) >= first + 2
    del tok


def _with_eos(src, dst, config_eos, generation_eos) -> str:
    """A copy of model `src` whose config.json and generation_config.json list these EOS ids."""
    import json
    shutil.copytree(src, dst, dirs_exist_ok=True)
    for name, eos in (("config.json", config_eos), ("generation_config.json", generation_eos)):
        path = os.path.join(dst, name)
        cfg = json.load(open(path)) if os.path.exists(path) else {}
        cfg["eos_token_id"] = eos
        json.dump(cfg, open(path, "w"))
    return str(dst)


def test_eos_stops_unless_ignored(tiny_model_factory, tmp_path):
    path = tiny_model_factory("llama")
    base = LLM(path, max_model_len=96).generate("Paris is", SamplingParams(**GREEDY),
                                                use_tqdm=False)[0].outputs[0]
    # make the 3rd greedy token the model's eos: generation must stop there
    eos = base.token_ids[2]
    llm = LLM(_with_eos(path, tmp_path / "eos", eos, eos), max_model_len=96)
    assert llm.llm_engine.eos_token_ids == (eos,)
    out = llm.generate("Paris is", SamplingParams(temperature=0, max_tokens=12),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids[:3] and out.finish_reason == "stop"
    assert out.stop_reason is None
    out = llm.generate("Paris is", SamplingParams(**GREEDY), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids


def test_every_eos_id_of_generation_config_stops(tiny_model_factory, tmp_path):
    """generation_config.json lists two EOS ids (Llama-3 Instruct: <|end_of_text|> and
    <|eot_id|>): the second one, which config.json does not list, stops a sequence too (as a
    stop token: stop_reason is its id, like vLLM's), min_tokens masks it, ignore_eos ignores it,
    and a beam that reaches it ends."""
    path = tiny_model_factory("llama")
    base = LLM(path, max_model_len=96).generate("Paris is", SamplingParams(**GREEDY),
                                                use_tqdm=False)[0].outputs[0]
    second = base.token_ids[3]
    first = base.token_ids.index(second)
    primary = next(t for t in range(3, 100) if t not in base.token_ids)   # never produced
    llm = LLM(_with_eos(path, tmp_path / "eos2", primary, [primary, second]), max_model_len=96)
    assert llm.llm_engine.eos_token_ids == (primary, second)
    out = llm.generate("Paris is", SamplingParams(temperature=0, max_tokens=12),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == second
    out = llm.generate("Paris is", SamplingParams(temperature=0, max_tokens=12,
                                                  min_tokens=first + 2),
                       use_tqdm=False)[0].outputs[0]
    assert second not in out.token_ids[:first + 2] and len(out.token_ids) >= first + 2
    out = llm.generate("Paris is", SamplingParams(**GREEDY), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids
    # vLLM 0.24's beam search completes a beam only at the tokenizer's EOS token: a second
    # EOS id of generation_config.json is an ordinary token there (make it the 3rd token of
    # the best beam: the best beam stays as it was)
    from runner.engine import BeamSearchParams
    bp = BeamSearchParams(beam_width=2, max_tokens=12, length_penalty=0.0)
    prompt = {"prompt_token_ids": llm.get_tokenizer()("Paris is").input_ids}
    best = LLM(path, max_model_len=96).beam_search([prompt], bp)[0].sequences[0].tokens
    beam_eos = best[len(prompt["prompt_token_ids"]) + 2]
    beam_llm = LLM(_with_eos(path, tmp_path / "eos3", primary, [primary, beam_eos]),
                   max_model_len=96)
    seqs = beam_llm.beam_search([prompt], bp)[0].sequences
    assert seqs[0].tokens == best and seqs[0].finish_reason is None


def test_max_model_len_caps_generation(llm):
    out = llm.generate({"prompt_token_ids": list(range(5, 90))},
                       SamplingParams(temperature=0, max_tokens=50, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 96
    assert out.outputs[0].finish_reason == "length"


def test_hub_id_from_local_cache_offline(tiny_model_factory, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1,
    honouring the revision."""
    src = tiny_model_factory("llama")
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v1").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    llm = LLM("acme/tiny-llama", revision="v1", max_model_len=64)
    assert llm.llm_engine.model_config.model_path.endswith(commit)
    ref = LLM(src, max_model_len=64)
    p = SamplingParams(**GREEDY)
    assert llm.generate("Hello", p, use_tqdm=False)[0].outputs[0].token_ids == \
        ref.generate("Hello", p, use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(ValueError, match="acme/absent.*could not be loaded"):
        LLM("acme/absent", max_model_len=64)


# ------------------------------------------------------------------------ bad input
def test_empty_prompt_list_and_empty_prompt(llm):
    with pytest.raises(ValueError, match="prompts is empty"):
        llm.generate([], use_tqdm=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    with pytest.raises(ValueError, match="2 sampling_params for 3 prompts"):
        llm.generate(["a", "b", "c"], [SamplingParams()] * 2, use_tqdm=False)


def test_prompt_longer_than_max_model_len(llm):
    with pytest.raises(ValueError, match="100 tokens.*max_model_len=96"):
        llm.generate({"prompt_token_ids": [5] * 100}, use_tqdm=False)
    # the failed call left nothing behind: the engine still serves
    assert not llm.llm_engine.has_unfinished_requests()
    assert llm.generate("ok", SamplingParams(**GREEDY), use_tqdm=False)[0].finished


def test_generate_freezes_the_collector_per_step_and_restores_it(llm):
    """Inside generate the collector skips what lived before the step (gc.freeze); afterwards,
    on success and on an error alike, nothing stays frozen; a process that froze objects or
    disabled collection itself is left as it was."""
    import gc
    seen = []

    def watch(output_ids, row):
        seen.append(gc.get_freeze_count())
        return row

    def fail(output_ids, row):
        raise RuntimeError("processor failed")

    params = SamplingParams(**GREEDY, logits_processors=[watch])
    assert gc.get_freeze_count() == 0
    llm.generate("Paris is", params, use_tqdm=False)
    assert len(seen) == GREEDY["max_tokens"] and min(seen) > 0
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError, match="processor failed"):
        llm.generate("Paris is", SamplingParams(**GREEDY, logits_processors=[fail]),
                     use_tqdm=False)
    assert gc.get_freeze_count() == 0
    # the process's own policy wins: frozen objects stay frozen (some are freed meanwhile),
    # none are added
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen.clear()
        llm.generate("Paris is", params, use_tqdm=False)
        assert 0 < gc.get_freeze_count() <= frozen and max(seen) <= frozen
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        seen.clear()
        llm.generate("Paris is", params, use_tqdm=False)
        assert set(seen) == {0} and not gc.isenabled()
    finally:
        gc.enable()


def test_a_stepping_caller_gets_the_same_collector_policy_from_the_engine(llm):
    """The engine, not generate, owns the policy: a caller that steps LLMEngine itself (the
    runner's backends, a Ray replica, the server) has the collector skip what lived before each
    step while requests are in, and nothing frozen once the last output is out or the last
    request aborted."""
    import gc
    engine = llm.llm_engine
    seen = []

    def watch(output_ids, row):
        seen.append(gc.get_freeze_count())
        return row

    params = SamplingParams(**GREEDY, logits_processors=[watch])
    engine.add_request("a", "Paris is", params)
    engine.add_request("b", "Rome is", params)
    finished = set()
    while engine.has_unfinished_requests():
        assert gc.get_freeze_count() == 0 or seen  # frozen only from the first step on
        finished.update(o.request_id for o in engine.step() if o.finished)
    assert finished == {"a", "b"} and len(seen) == 2 * GREEDY["max_tokens"] and min(seen) > 0
    assert gc.get_freeze_count() == 0
    # a busy period that ends by abort
    engine.add_request("c", "Paris is", params)
    engine.step()
    assert gc.get_freeze_count() > 0
    engine.abort_request("c")
    while engine.has_unfinished_requests():
        engine.step()
    assert gc.get_freeze_count() == 0


def test_missing_model_folder_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="model folder not found"):
        LLM(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        LLM(str(tmp_path / "empty"))


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(dtype="float17"), ValueError, "dtype must be one of"),
    (dict(load_format="zip"), ValueError, "load_format must be one of"),
    (dict(device="tpu"), ValueError, "device must be one of"),
    (dict(gpu_memory_utilization=1.5), ValueError, "gpu_memory_utilization"),
    (dict(block_size=3), ValueError, "block_size"),
    (dict(max_model_len=100000), ValueError, "larger than the model's maximum"),
    (dict(tensor_parallel_size=3), ValueError, "does not divide the model's num_attention_heads=4"),
    (dict(tensor_parallel_size=0), ValueError, "tensor_parallel_size must be an integer"),
    (dict(quantization="awq"), ValueError, "quantization='awq' needs the checkpoint's"),
    (dict(quantization="int3"), ValueError, "quantization='int3' is not supported"),
    (dict(cpu_offload_gb=-1), ValueError, "cpu_offload_gb must be a number"),
    (dict(enable_prefix_caching="yes"), ValueError, "enable_prefix_caching must be True, False"),
    (dict(kv_cache_dtype="int8"), ValueError, "kv_cache_dtype must be one of.*fp8_e5m2"),
    (dict(not_an_arg=1), TypeError, "not_an_arg"),
])
def test_bad_engine_arguments(tiny_llama, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        LLM(tiny_llama, **kwargs)


def test_unsupported_architecture(tmp_path, tiny_llama):
    import json
    dst = tmp_path / "weird"
    shutil.copytree(tiny_llama, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["FancyNetForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="FancyNetForCausalLM.*LlamaForCausalLM.*"
                                         "Qwen2ForCausalLM"):
        LLM(str(dst))


def test_sampling_params_rules_surface_as_value_errors():
    # vLLM 0.24 resets greedy's top_p instead of refusing it; a top_p outside (0, 1] raises
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(temperature=0.5, top_p=1.5)
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(use_beam_search=True, best_of=1, temperature=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=-2)          # vLLM 0.24: -1 is the whole vocabulary


def test_dtype_auto_is_float32_on_cpu_and_explicit_dtype_honoured(tiny_llama):
    assert LLM(tiny_llama, max_model_len=32).llm_engine.model_config.dtype == torch.float32
    llm = LLM(tiny_llama, dtype="bfloat16", max_model_len=32)
    assert llm.llm_engine.executor.model_runner.kv_caches[0].dtype == torch.bfloat16
    assert os.path.isdir(llm.llm_engine.model_config.model_path)


def test_cpu_kv_cache_is_sized_to_the_batch_within_vllm_cpu_kvcache_space(tiny_llama,
                                                                           monkeypatch):
    """On CPU the KV cache holds what max_num_seqs sequences of max_model_len tokens fill (not
    a flat 4 GiB), at most VLLM_CPU_KVCACHE_SPACE GiB (vLLM's variable, default 4)."""
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    engine = LLM(tiny_llama, device="cpu", max_num_seqs=3, max_model_len=100).llm_engine
    stats = engine.get_stats()
    assert stats["num_gpu_blocks"] == 3 * 7                 # 3 x ceil(100 / 16)
    caches = engine.executor.model_runner.kv_caches
    assert sum(c.numel() * c.element_size() for c in caches) == stats["kv_cache_bytes"]
    block_bytes = stats["kv_cache_bytes"] // stats["num_gpu_blocks"]
    # the default run's shape wants more than 4 GiB of a big model: capped at 4 GiB
    from runner.engine.worker import cpu_kv_cache_bytes
    assert cpu_kv_cache_bytes() == 4 << 30
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", str(40 * block_bytes / 2**30))
    engine = LLM(tiny_llama, device="cpu", max_num_seqs=256, max_model_len=100).llm_engine
    assert engine.get_stats()["num_gpu_blocks"] == 40
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", str(2 * block_bytes / 2**30))
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE"):
        LLM(tiny_llama, device="cpu", max_model_len=100)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "-1")
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE must be >= 0"):
        LLM(tiny_llama, device="cpu")
