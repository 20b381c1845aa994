"""vLLM drop-in conformance (issue 19): module paths, EngineArgs names that users pass to LLM(),
generation_config defaults, seeding of the global generators, set_tokenizer, and vLLM 0.24's
RequestOutput / CompletionOutput constructors. Each test states vLLM's documented behaviour
(vllm/entrypoints/llm.py, vllm/engine/arg_utils.py, vllm/config/model.py, vllm/outputs.py,
vllm/utils/torch_utils.py) and checks ours against it."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch

from runner.engine import LLM, CompletionOutput, EngineArgs, RequestOutput, SamplingParams

SMALL = dict(device="cpu", max_model_len=96, max_num_batched_tokens=64, max_num_seqs=8)
GREEDY = dict(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, **SMALL)


def _model_with_generation_config(src: str, dst, gen: dict) -> str:
    folder = os.fspath(dst)
    shutil.copytree(src, folder)
    with open(os.path.join(folder, "generation_config.json"), "w") as fh:
        json.dump(gen, fh)
    return folder


# ------------------------------------------------------------------------------- module paths
def test_vllm_module_paths_import_one_to_one():
    from runner.engine.engine.arg_utils import EngineArgs as ArgUtilsEngineArgs
    from runner.engine.inputs import PromptType, TextPrompt, TokensPrompt  # noqa: F401
    from runner.engine.utils.argparse_utils import FlexibleArgumentParser  # noqa: F401

    assert ArgUtilsEngineArgs is EngineArgs


def test_prompt_to_seq_reads_one_prompt_or_many_as_vllm():
    from runner.engine.inputs import prompt_to_seq
    assert prompt_to_seq("a") == ["a"]
    assert prompt_to_seq([1, 2, 3]) == [[1, 2, 3]]                # list[int]: one prompt
    assert prompt_to_seq([[1, 2], [3]]) == [[1, 2], [3]]
    assert prompt_to_seq({"prompt": "a"}) == [{"prompt": "a"}]
    assert prompt_to_seq(["a", "b"]) == ["a", "b"]


def test_text_tokens_and_list_int_prompts_generate_the_same(llm):
    from runner.engine.inputs import TextPrompt, TokensPrompt
    ids = llm.get_tokenizer()("Hello world").input_ids
    outs = llm.generate([TextPrompt(prompt="Hello world"), TokensPrompt(prompt_token_ids=ids),
                         ids], SamplingParams(**GREEDY), use_tqdm=False)
    assert len(outs) == 3 and [o.prompt_token_ids for o in outs] == [ids] * 3
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids == \
        outs[2].outputs[0].token_ids
    single = llm.generate(ids, SamplingParams(**GREEDY), use_tqdm=False)     # one list[int]
    assert len(single) == 1 and single[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


# ------------------------------------------------------------------------- the command line
def test_flexible_argument_parser_takes_dashes_and_underscores():
    from runner.engine.utils.argparse_utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser()
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--enable-prefix-caching", action="store_true")
    for argv in (["--max-model-len", "5"], ["--max_model_len", "5"], ["--max_model-len=5"]):
        assert parser.parse_args(argv).max_model_len == 5
    assert parser.parse_args(["--enable_prefix_caching"]).enable_prefix_caching is True
    with pytest.raises(SystemExit):          # no prefix abbreviations, as vLLM's
        parser.parse_args(["--max", "5"])


def test_add_cli_args_mirrors_every_engine_args_field():
    import dataclasses

    from runner.engine.utils.argparse_utils import FlexibleArgumentParser
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())     # returns the parser
    args = parser.parse_args(["--model", "m"])
    defaults = EngineArgs(model="m")
    for f in dataclasses.fields(EngineArgs):
        assert getattr(args, f.name) == getattr(defaults, f.name), f.name
    args = parser.parse_args([
        "--model=m", "-tp", "2", "--max-model-len", "1k", "--no-enable-prefix-caching",
        "--enforce-eager", "--num-gpu-blocks-override", "None", "--preemption-mode", "swap",
        "--hf-overrides", '{"num_hidden_layers": 1}', "--compilation-config", "0",
        "--override_generation_config", '{"temperature": 0.5}', "--dtype", "float32"])
    ea = EngineArgs.from_cli_args(args)
    assert (ea.tensor_parallel_size, ea.max_model_len, ea.enable_prefix_caching,
            ea.enforce_eager) == (2, 1000, False, True)                 # 1k = 1000 (vLLM's)
    assert ea.num_gpu_blocks_override is None and ea.preemption_mode == "swap"
    assert ea.hf_overrides == {"num_hidden_layers": 1} and ea.compilation_config == 0
    assert ea.override_generation_config == {"temperature": 0.5} and ea.dtype == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--device", "tpu"])     # choices


def test_from_engine_args_builds_an_llm(tiny_llama):
    llm = LLM.from_engine_args(EngineArgs(model=tiny_llama, max_num_seqs=3, **{
        k: v for k, v in SMALL.items() if k != "max_num_seqs"}))
    assert llm.llm_engine.scheduler_config.max_num_seqs == 3


def test_sleep_profiler_and_pooler_configs_are_engine_args(tiny_llama, tiny_bert, tmp_path):
    """vLLM 0.24 declares enable_sleep_mode, profiler_config and pooler_config on EngineArgs:
    the command line takes them and from_engine_args passes them on."""
    from runner.engine.utils.argparse_utils import FlexibleArgumentParser
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args([
        "--model", tiny_llama, "--device", "cpu", "--max-model-len", "64", "--enable-sleep-mode",
        "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "%s"}' % tmp_path])
    llm = LLM.from_engine_args(EngineArgs.from_cli_args(args))
    llm.sleep(level=1)
    llm.wake_up()
    llm.start_profile()
    llm.generate("a b", SamplingParams(**GREEDY), use_tqdm=False)
    llm.stop_profile()
    assert any(p.name.endswith(".pt.trace.json.gz") for p in tmp_path.iterdir())
    plain = LLM.from_engine_args(EngineArgs(model=tiny_llama, device="cpu", max_model_len=64))
    with pytest.raises(RuntimeError, match="enable_sleep_mode=True"):
        plain.sleep()
    mean = LLM.from_engine_args(EngineArgs(model=tiny_bert, device="cpu",
                                           pooler_config={"pooling_type": "MEAN"}))
    cls = LLM.from_engine_args(EngineArgs(model=tiny_bert, device="cpu",
                                          pooler_config={"pooling_type": "CLS"}))
    text = ["a short sentence here"]
    assert mean.embed(text, use_tqdm=False)[0].outputs.embedding != \
        cls.embed(text, use_tqdm=False)[0].outputs.embedding


# ------------------------------------------------------------------------ generation_config
GEN = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.6,
       "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
       "max_new_tokens": 7}


def test_default_sampling_params_come_from_generation_config(tiny_llama, tmp_path):
    folder = _model_with_generation_config(tiny_llama, tmp_path / "m", GEN)
    sp = LLM(folder, **SMALL).get_default_sampling_params()
    # vLLM's get_diff_sampling_param: these six keys, max_new_tokens read as max_tokens
    assert (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.repetition_penalty,
            sp.max_tokens) == (0.6, 0.9, 20, 0.05, 1.1, 7)
    neutral = LLM(folder, generation_config="vllm", **SMALL).get_default_sampling_params()
    plain = SamplingParams()
    assert (neutral.temperature, neutral.top_p, neutral.top_k, neutral.max_tokens) == \
        (plain.temperature, plain.top_p, plain.top_k, plain.max_tokens)
    # a folder given as generation_config, and override_generation_config on top
    other = LLM(tiny_llama, generation_config=folder,
                override_generation_config={"temperature": 0.3}, **SMALL)
    sp = other.get_default_sampling_params()
    assert (sp.temperature, sp.top_k, sp.max_tokens) == (0.3, 20, 7)
    assert other.get_default_sampling_params() is not sp      # a new object each call
    with pytest.raises(ValueError, match="generation_config"):
        LLM(tiny_llama, generation_config=os.fspath(tmp_path / "nowhere"), **SMALL)


def test_generate_without_params_uses_the_model_defaults(tiny_llama, tmp_path):
    """vLLM: generate(sampling_params=None) uses get_default_sampling_params()."""
    folder = _model_with_generation_config(
        tiny_llama, tmp_path / "m", {"eos_token_id": 2, "temperature": 0.0,
                                     "max_new_tokens": 4})
    llm = LLM(folder, **SMALL)
    got = llm.generate("The river flows", use_tqdm=False)[0].outputs[0]
    want = llm.generate("The river flows", SamplingParams(temperature=0, max_tokens=4),
                        use_tqdm=False)[0].outputs[0]
    assert got.token_ids == want.token_ids and len(got.token_ids) <= 4
    assert llm.chat([{"role": "user", "content": "hi"}], use_tqdm=False)[0].outputs[0] \
        .token_ids.__len__() <= 4


def test_every_generation_config_eos_id_stops(llm, tiny_llama, tmp_path):
    free = llm.generate("The river flows", SamplingParams(temperature=0, max_tokens=8,
                                                          ignore_eos=True), use_tqdm=False)
    tokens = free[0].outputs[0].token_ids
    stop_at = next(i for i, t in enumerate(tokens) if t != 2 and i >= 1)
    extra = tokens[stop_at]
    folder = _model_with_generation_config(tiny_llama, tmp_path / "m",
                                           {"eos_token_id": [2, extra]})
    for kwargs in ({}, {"generation_config": "vllm"}):    # vLLM reads EOS ids in both
        out = LLM(folder, **SMALL, **kwargs).generate(
            "The river flows", SamplingParams(temperature=0, max_tokens=8),
            use_tqdm=False)[0].outputs[0]
        first = tokens.index(extra)
        assert out.token_ids == tokens[:first + 1] and out.finish_reason == "stop"


# ------------------------------------------------------------------- the other engine names
def test_hf_overrides_change_the_hf_config(llm, tiny_llama):
    """vLLM: a dict of hf_overrides is set on the HF config the model is built from; tokens
    equal HF transformers' on the same weights with the same config change."""
    from transformers import AutoModelForCausalLM
    over = LLM(tiny_llama, hf_overrides={"rms_norm_eps": 0.5}, **SMALL)
    assert over.model_config.hf_config.rms_norm_eps == 0.5
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, rms_norm_eps=0.5, dtype=torch.float32)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = ["The river flows", "Hello world! How", "Numbers like 12"]
    changed = False
    for prompt in prompts:
        ids = llm.get_tokenizer()(prompt).input_ids
        want = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got = over.generate([ids], params, use_tqdm=False)[0].outputs[0].token_ids
        assert got == want, prompt
        changed |= got != llm.generate([ids], params, use_tqdm=False)[0].outputs[0].token_ids
    assert changed          # the override reached the model
    called = LLM(tiny_llama, hf_overrides=lambda c: (setattr(c, "rms_norm_eps", 0.5), c)[1],
                 **SMALL)
    assert called.model_config.hf_config.rms_norm_eps == 0.5
    with pytest.raises(ValueError, match="hf_overrides"):
        LLM(tiny_llama, hf_overrides=["rms_norm_eps"], **SMALL)


def test_max_logprobs(tiny_llama):
    llm = LLM(tiny_llama, max_logprobs=2, **SMALL)
    with pytest.raises(ValueError, match="max_logprobs=2"):
        llm.generate("a", SamplingParams(logprobs=3, max_tokens=1), use_tqdm=False)
    out = llm.generate("a", SamplingParams(logprobs=2, max_tokens=1), use_tqdm=False)
    assert len(out[0].outputs[0].logprobs[0]) >= 2
    unlimited = LLM(tiny_llama, max_logprobs=-1, **SMALL)      # -1: no limit
    out = unlimited.generate("a", SamplingParams(logprobs=30, max_tokens=1), use_tqdm=False)
    assert len(out[0].outputs[0].logprobs[0]) >= 30
    with pytest.raises(ValueError, match="max_logprobs"):
        LLM(tiny_llama, max_logprobs=-2, **SMALL)


def test_runner_convert_and_task(tiny_llama):
    assert LLM(tiny_llama, runner="generate", convert="none", **SMALL).llm_engine is not None
    with pytest.raises(ValueError, match="runner='pooling'"):
        LLM(tiny_llama, runner="pooling", **SMALL)
    with pytest.raises(NotImplementedError, match="convert='embed'"):
        LLM(tiny_llama, convert="embed", **SMALL)
    with pytest.raises(ValueError, match="runner must be one of"):
        LLM(tiny_llama, runner="draft", **SMALL)
    with pytest.raises(TypeError, match="task"):
        LLM(tiny_llama, task="generate", **SMALL)


def test_tokenizer_mode(tiny_llama):
    assert LLM(tiny_llama, tokenizer_mode="hf", **SMALL).get_tokenizer() is not None
    with pytest.raises(NotImplementedError, match="tokenizer_mode='mistral'"):
        LLM(tiny_llama, tokenizer_mode="mistral", **SMALL)


def test_compilation_config(tiny_llama):
    from runner.engine.compilation import resolve_compilation_config
    assert resolve_compilation_config(None, 8) == (None, False)
    assert resolve_compilation_config(0, 8) == (None, False)
    assert resolve_compilation_config({"cudagraph_capture_sizes": [4, 1, 2, 16]}, 8) == \
        ([1, 2, 4], False)                               # sorted; above max_num_seqs dropped
    assert resolve_compilation_config({"max_cudagraph_capture_size": 4}, 16)[0] == [1, 2, 4]
    assert resolve_compilation_config({"cudagraph_mode": "NONE"}, 8) == (None, True)
    for bad, err in ((3, NotImplementedError), ({"mode": 1}, NotImplementedError),
                     ({"level": 3}, NotImplementedError),
                     ({"cudagraph_mode": "PIECEWISE"}, NotImplementedError),
                     ({"use_inductor": True}, NotImplementedError), ("x", ValueError),
                     ({"cudagraph_capture_sizes": [0]}, ValueError)):
        with pytest.raises(err, match="compilation_config"):
            resolve_compilation_config(bad, 8)
    llm = LLM(tiny_llama, compilation_config={"cudagraph_capture_sizes": [1, 2, 4]}, **SMALL)
    assert llm.llm_engine.executor.model_runner.capture_sizes == [1, 2, 4]
    eager = LLM(tiny_llama, compilation_config={"cudagraph_mode": "NONE"}, **SMALL)
    assert eager.llm_engine.config.enforce_eager
    with pytest.raises(NotImplementedError, match="torch.compile"):
        LLM(tiny_llama, compilation_config=3, **SMALL)


def test_disable_log_stats_false_logs_stats(tiny_llama, caplog):
    quiet = LLM(tiny_llama, **SMALL)       # vLLM's LLM default: disable_log_stats=True
    assert quiet.llm_engine.stat_logger is None
    llm = LLM(tiny_llama, disable_log_stats=False, **SMALL)
    llm.llm_engine.stat_logger.interval_s = 0.0          # every step, for the test
    with caplog.at_level(logging.INFO, logger="runner.engine"):
        llm.generate(["a b", "c"], SamplingParams(**GREEDY), use_tqdm=False)
    lines = [r.getMessage() for r in caplog.records if "Avg prompt throughput" in r.getMessage()]
    assert lines and "Running:" in lines[0] and "KV cache usage" in lines[0]
    # EngineArgs' default is vLLM's (stats on), so from_engine_args / LLM(**vars(args)) log them
    from runner.engine import EngineArgs
    assert EngineArgs(model=tiny_llama).disable_log_stats is False
    args = EngineArgs(model=tiny_llama, device="cpu", max_model_len=64)
    assert LLM.from_engine_args(args).llm_engine.stat_logger is not None


def test_swap_space_sizes_the_swap_books(tiny_llama):
    none = LLM(tiny_llama, swap_space=0, **SMALL).llm_engine
    some = LLM(tiny_llama, swap_space=0.01, **SMALL).llm_engine
    block_bytes = some.executor.model_runner.block_bytes
    assert none.cache_config.num_cpu_blocks == 0 and none.cpu_block_manager is None
    assert some.cache_config.num_cpu_blocks == int(0.01 * 2**30 // block_bytes) > 0
    with pytest.raises(ValueError, match="swap_space"):
        LLM(tiny_llama, swap_space=-1, **SMALL)


def test_callable_use_tqdm_builds_the_bar(llm):
    made = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.closed, self.postfix = kwargs, 0, False, None
            made.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    llm.generate(["a", "b", "c"], SamplingParams(**GREEDY), use_tqdm=Bar)
    (bar,) = made
    assert bar.kwargs["total"] == 3 and bar.kwargs["desc"] == "Processed prompts"
    assert bar.n == 3 and bar.closed


# -------------------------------------------------------------------------------- seeding
def test_seed_sets_the_global_generators_as_vllm(tiny_llama):
    """vLLM's workers call set_random_seed(seed) (random, numpy, torch) after start-up: the
    numbers drawn after LLM(seed=s) are those drawn right after seeding with s."""
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    LLM(tiny_llama, seed=5, **SMALL)
    after = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    want = (random.random(), float(np.random.rand()), torch.rand(3))
    assert after[:2] == want[:2] and torch.equal(after[2], want[2])


def test_set_random_seed_none_leaves_the_state():
    from runner.engine.utils.torch_utils import set_random_seed
    torch.manual_seed(3)
    set_random_seed(None)
    a = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(a, torch.rand(2))


# -------------------------------------------------------------------------- set_tokenizer
def test_set_tokenizer_decodes_text_and_logprobs_with_the_new_one(tiny_llama):
    from transformers import AutoTokenizer
    llm = LLM(tiny_llama, **SMALL)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=1)
    before = llm.generate("The river", params, use_tqdm=False)[0].outputs[0]
    new = AutoTokenizer.from_pretrained(tiny_llama)
    plain_decode = new.decode
    new.decode = lambda ids, **kw: plain_decode(ids, **kw).upper()   # another tokenizer
    llm.set_tokenizer(new)
    assert llm.get_tokenizer() is new
    after = llm.generate("The river", params, use_tqdm=False)[0].outputs[0]
    assert after.token_ids == before.token_ids
    for step in after.logprobs:
        for tid, lp in step.items():
            assert lp.decoded_token == plain_decode([tid]).upper()
    assert after.text == before.text.upper() != before.text


# ---------------------------------------------------------------------------------- outputs
def test_request_output_takes_vllm_positional_order_and_extra_kwargs(caplog):
    comp = CompletionOutput(0, "hi", [5, 6], -1.5, None, None, "stop", 6)
    assert (comp.routed_experts, comp.finish_reason, comp.stop_reason) == (None, "stop", 6)
    assert comp.lora_request is None and comp.finished()
    with caplog.at_level(logging.WARNING, logger="runner.engine"):
        out = RequestOutput("r1", "p", [1, 2], None, [comp], True, None, None, None, None, 2,
                            kv_transfer_params={"a": 1}, some_future_field=3)
    assert (out.request_id, out.prompt, out.prompt_token_ids, out.outputs, out.finished) == \
        ("r1", "p", [1, 2], [comp], True)
    assert (out.lora_request, out.encoder_prompt, out.encoder_prompt_token_ids,
            out.num_cached_tokens, out.kv_transfer_params) == (None, None, None, 2, {"a": 1})
    assert not hasattr(out, "some_future_field")
    assert any("some_future_field" in r.getMessage() for r in caplog.records)
    assert repr(out).startswith("RequestOutput(request_id=r1, prompt='p', prompt_token_ids=[1, "
                                "2], encoder_prompt=None, encoder_prompt_token_ids=None, ")
    assert "routed_experts=None, cumulative_logprob=-1.5" in repr(comp)
    assert out == RequestOutput("r1", "p", [1, 2], None, [comp], True, num_cached_tokens=2,
                                kv_transfer_params={"a": 1})
    with pytest.raises(TypeError):
        RequestOutput("r", "p", [1], None, [], True, None, None, None, None, 0, {"x": 1})
