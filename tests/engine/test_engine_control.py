"""LLM's engine control as vLLM 0.24 documents it: collective_rpc / apply_model (one result per
worker), start_profile / stop_profile (torch traces in profiler_config's folder, a RuntimeError
without one), sleep / wake_up (same outputs after waking), get_metrics (reader objects, refused
with stat logging off), LLM.from_engine_args, chat's chat_template_kwargs and developer role."""
from __future__ import annotations

import os
import time

import pytest
import torch

from runner.engine import LLM, EngineArgs, SamplingParams
from runner.engine.chat_utils import developer_to_system
from runner.engine.profiler import ProfilerConfig
from runner.engine.v1.metrics.reader import Counter, Gauge

PROMPTS = ["The quick brown fox", "Paris is the capital of"]
GREEDY = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def llm(tiny_llama, tmp_path_factory):
    trace_dir = tmp_path_factory.mktemp("traces")
    return LLM(tiny_llama, device="cpu", max_model_len=128, disable_log_stats=False,
               enable_sleep_mode=True, profiler_config={"profiler": "torch", "torch_profiler_dir": str(trace_dir)})


def _tokens(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def test_collective_rpc_and_apply_model(llm, tiny_llama):
    from transformers import AutoModelForCausalLM
    [model] = llm.collective_rpc("get_model")
    assert isinstance(model, torch.nn.Module)
    assert llm.collective_rpc(lambda worker, a, b=0: (type(worker).__name__, a + b),
                              args=(2,), kwargs={"b": 3}) == [("Worker", 5)]
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama)
    want = sum(p.numel() for p in hf.parameters())
    assert llm.apply_model(lambda m: sum(p.numel() for p in m.parameters())) == [want]
    with pytest.raises(AttributeError, match="no method 'nope'"):
        llm.collective_rpc("nope")
    with pytest.raises(TimeoutError):
        llm.collective_rpc(lambda w: time.sleep(2), timeout=0.05)


def test_profile_writes_trace(llm):
    cfg = llm._control.profiler.config
    llm.start_profile("myrun")
    with pytest.raises(RuntimeError, match="running already"):
        llm.start_profile()
    llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)
    llm.stop_profile()
    files = os.listdir(cfg.torch_profiler_dir)
    assert any(f.startswith("myrun_dp0_pp0_tp0") and f.endswith(".pt.trace.json.gz")
               for f in files), files
    with pytest.raises(RuntimeError, match="without start_profile"):
        llm.stop_profile()


def test_profile_needs_a_config(tiny_llama, tmp_path):
    plain = LLM(tiny_llama, device="cpu", max_model_len=64)
    with pytest.raises(RuntimeError, match="Profiling is not enabled"):
        plain.start_profile()
    with pytest.raises(RuntimeError, match="enable_sleep_mode=True"):
        plain.sleep()
    with pytest.raises(ValueError, match="torch_profiler_dir must be set"):
        ProfilerConfig(profiler="torch")
    with pytest.raises(ValueError, match="only applicable when profiler is set to 'torch'"):
        ProfilerConfig(torch_profiler_dir=str(tmp_path))
    with pytest.raises(NotImplementedError, match="warmup_iterations"):
        ProfilerConfig(profiler="torch", torch_profiler_dir="x", warmup_iterations=2)
    assert os.path.isabs(ProfilerConfig(profiler="torch", torch_profiler_dir="rel").
                         torch_profiler_dir)


def test_sleep_wake_up_same_outputs(llm):
    before = _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    llm.sleep(level=1)
    mr = llm.llm_engine.executor.model_runner
    assert mr.kv_caches == [] and llm._control.is_sleeping()
    with pytest.raises(RuntimeError, match="while the engine sleeps"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    llm.wake_up()
    assert len(mr.kv_caches) == mr.num_layers and not llm._control.is_sleeping()
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == before
    # level 2 discards the weights: wake them, reload them, then the KV cache
    llm.sleep(level=2)
    assert all(p.numel() == 0 for p in mr.model.parameters())
    llm.wake_up(tags=["weights"])
    llm.collective_rpc("reload_weights")
    with pytest.raises(RuntimeError, match="while the engine sleeps"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    llm.wake_up(tags=["kv_cache"])      # everything back: scheduling resumes by itself
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == before
    llm.sleep(level=2)
    with pytest.raises(RuntimeError, match="wake up 'weights' before 'kv_cache'"):
        llm.wake_up(tags=["kv_cache"])
    llm.wake_up(tags=["weights"])
    llm.collective_rpc("reload_weights")
    llm.wake_up()
    # level 0 pauses scheduling only, until wake_up(["scheduling"])
    llm.sleep(level=0)
    assert mr.kv_caches and llm._control.is_sleeping()
    with pytest.raises(RuntimeError, match="while the engine sleeps"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    llm.wake_up(tags=["scheduling"])
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == before
    with pytest.raises(ValueError, match="sleep level"):
        llm.sleep(level=3)
    with pytest.raises(ValueError, match="wake_up tags"):
        llm.wake_up(tags=["gpu"])


def test_get_metrics(tiny_llama):
    quiet = LLM(tiny_llama, device="cpu", max_model_len=64)
    with pytest.raises(RuntimeError, match="disable_log_stats=False"):
        quiet.get_metrics()
    llm = LLM(tiny_llama, device="cpu", max_model_len=64, disable_log_stats=False,
              enable_prefix_caching=False)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    metrics = {m.name: m for m in llm.get_metrics()}
    assert isinstance(metrics["vllm:prompt_tokens"], Counter)
    assert metrics["vllm:prompt_tokens"].value == sum(len(o.prompt_token_ids) for o in outs)
    assert metrics["vllm:generation_tokens"].value == sum(len(o.outputs[0].token_ids)
                                                          for o in outs)
    assert isinstance(metrics["vllm:num_requests_running"], Gauge)
    assert metrics["vllm:num_requests_running"].value == 0
    assert metrics["vllm:num_requests_waiting"].value == 0
    assert metrics["vllm:kv_cache_usage_perc"].value == 0.0
    assert metrics["vllm:prompt_tokens"].labels["model_name"] == tiny_llama


def test_from_engine_args(tiny_llama, llm):
    built = LLM.from_engine_args(EngineArgs(model=tiny_llama, device="cpu", max_model_len=128))
    assert _tokens(built.generate(PROMPTS, GREEDY, use_tqdm=False)) == \
        _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def test_chat_template_kwargs_and_developer_role(llm):
    tok = llm.get_tokenizer()
    template = ("{% if greeting %}{{ greeting }}|{% endif %}{% for m in messages %}"
                "[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}")
    msgs = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "system", "content": "no lists"}]
    out = llm.chat(msgs, SamplingParams(max_tokens=1), use_tqdm=False, chat_template=template,
                   chat_template_kwargs={"greeting": "HELLO"})[0]
    # the template has no developer role: developer -> system, systems merged up front
    assert out.prompt == "HELLO|[system:be brief\nno lists][user:hi]"
    assert out.prompt_token_ids == tok(out.prompt, add_special_tokens=False).input_ids
    keeps = template + "{% if 'developer' %}{% endif %}"
    out = llm.chat(msgs, SamplingParams(max_tokens=1), use_tqdm=False, chat_template=keeps)[0]
    assert out.prompt == "[developer:be brief][user:hi][system:no lists]"
    with pytest.raises(ValueError, match="unexpected chat template kwargs"):
        llm.chat(msgs, chat_template=template, chat_template_kwargs={"tokenize": True})
    assert developer_to_system([{"role": "developer", "content": "a", "tools": []}]) == \
        [{"role": "system", "content": "a"}]
