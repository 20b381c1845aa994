"""kv_cache_dtype='fp8' / 'fp8_e4m3' / 'fp8_e5m2': the engine against HF transformers whose
attention sees the same fp8-rounded keys and values (CPU, float32 weights).

The reference is independent of the engine's cache code: HF's own Llama with an attention
function that rounds its (rotated) keys and values to fp8 -- saturating, unscaled, as vLLM's
default k_scale = v_scale = 1.0 -- before SDPA. Both backends (the torch reference ops and the
Triton kernels under the interpreter) must give its greedy tokens and its logprobs; the fp8
cache must also actually change the numbers (it is not silently ignored) and take a quarter of
the float32 cache's bytes.
"""
from __future__ import annotations

import pytest
import torch

from runner.engine import LLM, SamplingParams

PROMPTS = ["Paris is the capital", "The quick brown fox jumps over the lazy dog and", "Hi"]
FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
       "fp8_e5m2": torch.float8_e5m2}


def _fake_quant(x: torch.Tensor, fp8: torch.dtype) -> torch.Tensor:
    limit = torch.finfo(fp8).max
    return x.float().clamp(-limit, limit).to(fp8).to(x.dtype)


def hf_model(path, kv_cache_dtype=None):
    """HF's Llama; with kv_cache_dtype its attention rounds keys and values to that fp8 type."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    impl = "sdpa"
    if kv_cache_dtype is not None:
        impl = f"kv_{kv_cache_dtype}"
        fp8 = FP8[kv_cache_dtype]

        def attention(module, query, key, value, *args, **kwargs):
            return sdpa_attention_forward(module, query, _fake_quant(key, fp8),
                                          _fake_quant(value, fp8), *args, **kwargs)

        AttentionInterface.register(impl, attention)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation=impl).eval()
    model.generation_config.eos_token_id = None
    return model


def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:]).view(-1, 1)).squeeze(1)


def engine_run(path, **kw):
    llm = LLM(path, dtype="float32", max_num_batched_tokens=8, block_size=4, max_model_len=64,
              **kw)
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0,
                        prompt_logprobs=0)
    return llm, llm.generate(PROMPTS, sp, use_tqdm=False)


def _engine_logprobs(out) -> torch.Tensor:
    """The engine's log p of every token after the first: prompt logprobs, then sampled."""
    ids = out.prompt_token_ids + out.outputs[0].token_ids
    prompt = [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], out.prompt_token_ids[1:])]
    sampled = [d[t].logprob for d, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
    return ids, torch.tensor(prompt + sampled)


@pytest.mark.parametrize("arch,kv_cache_dtype,kernel_backend", [
    ("llama_gqa", "fp8", "torch"), ("llama_gqa", "fp8_e5m2", "torch"),
    ("llama_gqa", "fp8_e4m3", "triton"),
    # the other Llama relatives share the decoder, so they share the fp8 cache
    ("qwen3", "fp8", "torch"), ("qwen3", "fp8", "triton"), ("qwen2", "fp8", "torch")])
def test_fp8_kv_cache_equals_hf_with_fp8_keys_and_values(tiny_model_factory, arch,
                                                         kv_cache_dtype, kernel_backend):
    path = tiny_model_factory(arch)
    ref = hf_model(path, kv_cache_dtype)
    plain = hf_model(path)
    llm, outs = engine_run(path, kv_cache_dtype=kv_cache_dtype, kernel_backend=kernel_backend)
    stats = llm.llm_engine.get_stats()
    assert stats["kv_cache_dtype"] == kv_cache_dtype
    caches = llm.llm_engine.executor.model_runner.kv_caches
    assert all(c.dtype == FP8[kv_cache_dtype] for c in caches)
    moved = 0.0
    for out in outs:
        ids, got = _engine_logprobs(out)
        n = len(out.prompt_token_ids)
        with torch.no_grad():
            want = ref.generate(torch.tensor([ids[:n]]), max_new_tokens=8, do_sample=False,
                                pad_token_id=0)[0, n:].tolist()
        assert out.outputs[0].token_ids == want, out.prompt
        torch.testing.assert_close(got, hf_logprobs(ref, ids), atol=2e-4, rtol=0)
        moved = max(moved, (got - hf_logprobs(plain, ids)).abs().max().item())
    # rounding keys and values to fp8 moves the logprobs far beyond fp32 noise
    assert moved > 2e-3, moved


def test_fp8_cache_takes_a_quarter_of_the_float32_bytes(tiny_model_factory):
    path = tiny_model_factory("llama_gqa")
    kw = dict(dtype="float32", num_gpu_blocks_override=32, block_size=4, max_model_len=64)
    full = LLM(path, **kw).llm_engine.get_stats()
    fp8 = LLM(path, kv_cache_dtype="fp8", **kw).llm_engine.get_stats()
    assert full["kv_cache_dtype"] == "auto" and fp8["kv_cache_dtype"] == "fp8"
    assert fp8["kv_cache_token_capacity"] == full["kv_cache_token_capacity"] == 128
    assert fp8["kv_cache_bytes"] * 4 == full["kv_cache_bytes"]



def test_forks_copy_fp8_blocks_and_score_like_hf(tiny_model_factory):
    """n=4 forks share the prompt's fp8 blocks and copy the last partial one on write (a byte
    copy: indexed copies are not defined for fp8); each fork's logprobs equal HF's with fp8
    keys and values for that fork's tokens."""
    path = tiny_model_factory("llama_gqa")
    ref = hf_model(path, "fp8")
    llm = LLM(path, dtype="float32", block_size=4, max_model_len=64, kv_cache_dtype="fp8")
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True,
                            logprobs=0)
    out = llm.generate("Paris is the capital of", params, use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1     # they really differ
    n = len(out.prompt_token_ids)
    assert n % 4 != 0                                               # a partial block is shared
    for comp in out.outputs:
        want = hf_logprobs(ref, out.prompt_token_ids + comp.token_ids)[n - 1:]
        got = torch.tensor([comp.logprobs[j][t].logprob for j, t in enumerate(comp.token_ids)])
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_tensor_parallel_fp8_cache_equals_hf_with_fp8_keys_and_values(tiny_model_factory):
    """tp=2 (gloo): each rank keeps its KV heads in an fp8 cache; every prompt and output
    token's logprob is still HF's with fp8 keys and values."""
    path = tiny_model_factory("llama_gqa")
    ref = hf_model(path, "fp8")
    llm = LLM(path, dtype="float32", device="cpu", kv_cache_dtype="fp8", tensor_parallel_size=2,
              max_num_batched_tokens=8, block_size=4, max_model_len=64)
    try:
        outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8,
                                                    ignore_eos=True, logprobs=0,
                                                    prompt_logprobs=0), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    for out in outs:
        ids, got = _engine_logprobs(out)
        torch.testing.assert_close(got, hf_logprobs(ref, ids), atol=2e-4, rtol=0)
