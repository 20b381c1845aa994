"""The engine against HF transformers on the same tiny float32 weights (CPU).

Greedy tokens must equal HF's generate token for token, across the Llama family, with chunked
prefill and under preemption; logprobs and prompt_logprobs must equal HF's log_softmax within
1e-4; forked n > 1 sequences must score exactly what HF computes for their tokens.
"""
from __future__ import annotations

import pytest
import torch

from runner.engine import LLM, SamplingParams

PROMPTS = [
    "Paris is the capital",
    "The quick brown fox jumps over the lazy dog and the river flows north through",
    "Hello",
    "Numbers like 12, 345 and 6789 appear in many passages about history. Question: who",
    "A paged KV cache",
]
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def hf_cache():
    return {}


def hf_model(path, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if path not in cache:
        cache[path] = (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
                       AutoTokenizer.from_pretrained(path))
    return cache[path]


def hf_greedy(model, tok, prompt, max_new):
    """HF generate, greedy, EOS not masked and not stopping (what ignore_eos=True means)."""
    ids = tok(prompt, return_tensors="pt").input_ids
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def hf_token_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i+1] | ids[:i+1]) for every i, from one full forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:]).view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("arch", ["llama", "llama_gqa", "qwen2", "mistral"])
def test_greedy_equals_hf_with_chunked_prefill(arch, tiny_model_factory, hf_cache):
    path = tiny_model_factory(arch)
    model, tok = hf_model(path, hf_cache)
    # 8 tokens per step: every prompt but the shortest is split into several chunks
    llm = LLM(path, max_num_batched_tokens=8, max_num_seqs=8, block_size=4, max_model_len=128)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                                ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        assert out.prompt == prompt
        assert out.outputs[0].token_ids == hf_greedy(model, tok, prompt, MAX_TOKENS), prompt
        assert out.outputs[0].finish_reason == "length"


def test_greedy_equals_hf_under_preemption(tiny_model_factory, hf_cache):
    path = tiny_model_factory("llama_gqa")
    model, tok = hf_model(path, hf_cache)
    # 16 blocks of 4 tokens: far fewer than 5 prompts x up to 47 tokens need, so sequences
    # are preempted and recomputed; a lone sequence (max 64 tokens) always fits
    llm = LLM(path, max_num_batched_tokens=16, block_size=4, max_model_len=64,
              num_gpu_blocks_override=16)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                                ignore_eos=True), use_tqdm=False)
    assert llm.llm_engine.get_stats()["num_preemptions"] > 0
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == hf_greedy(model, tok, prompt, MAX_TOKENS), prompt
    bm = llm.llm_engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


# max_num_seqs=3: the prompt-logprob rows' logits come in chunks of 3 rows, across the
# boundaries between sequences
@pytest.mark.parametrize("max_num_seqs", [256, 3])
def test_logprobs_and_prompt_logprobs_match_hf(tiny_model_factory, hf_cache, max_num_seqs):
    path = tiny_model_factory("qwen2")
    model, tok = hf_model(path, hf_cache)
    llm = LLM(path, max_num_batched_tokens=6 if max_num_seqs > 3 else 16, block_size=4,
              max_model_len=128, max_num_seqs=max_num_seqs)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3,
                            prompt_logprobs=2)
    outs = llm.generate(PROMPTS[:3], params, use_tqdm=False)
    for out in outs:
        comp = out.outputs[0]
        ids = out.prompt_token_ids + comp.token_ids
        ref = hf_token_logprobs(model, ids)
        n_prompt = len(out.prompt_token_ids)
        # prompt logprobs: None for the first token, then each prompt token's logprob
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == n_prompt
        for i in range(1, n_prompt):
            entry = out.prompt_logprobs[i][out.prompt_token_ids[i]]
            assert abs(entry.logprob - ref[i - 1].item()) < 1e-4
            assert len(out.prompt_logprobs[i]) <= 3       # the token plus top-2
        # generated tokens: the chosen token's logprob, rank 1 under greedy, top-3 listed
        for j, token in enumerate(comp.token_ids):
            entry = comp.logprobs[j][token]
            assert abs(entry.logprob - ref[n_prompt + j - 1].item()) < 1e-4
            assert entry.rank == 1
            assert len(comp.logprobs[j]) == 3
        assert abs(comp.cumulative_logprob - ref[n_prompt - 1:].sum().item()) < 1e-3


def test_n_samples_fork_shared_blocks_score_like_hf(tiny_model_factory, hf_cache):
    """n=4 sequences fork from one prefill and share its blocks (copy-on-write on the last
    partial block); each sequence's tokens must have exactly the logprobs HF computes for that
    sequence, which fails if a fork reads another fork's keys and values."""
    path = tiny_model_factory("llama")
    model, tok = hf_model(path, hf_cache)
    llm = LLM(path, block_size=4, max_model_len=128)
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True,
                            logprobs=0)
    out = llm.generate("Paris is the capital of", params, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1     # they really differ
    for comp in out.outputs:
        ids = out.prompt_token_ids + comp.token_ids
        ref = hf_token_logprobs(model, ids)[len(out.prompt_token_ids) - 1:]
        got = torch.tensor([comp.logprobs[j][t].logprob for j, t in enumerate(comp.token_ids)])
        assert torch.allclose(got, ref, atol=1e-4)


def test_seed_gives_same_text_alone_or_in_batch_of_32(tiny_llama):
    llm = LLM(tiny_llama, max_model_len=128, max_num_batched_tokens=64)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16,
                            ignore_eos=True)
    alone = llm.generate("Paris is the capital", seeded, use_tqdm=False)[0].outputs[0]
    others = [SamplingParams(temperature=0.9, max_tokens=10 + i % 7, ignore_eos=True)
              for i in range(31)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(31)]
    batch = llm.generate(prompts[:13] + ["Paris is the capital"] + prompts[13:],
                         others[:13] + [seeded] + others[13:], use_tqdm=False)
    assert batch[13].outputs[0].token_ids == alone.token_ids
    assert batch[13].outputs[0].text == alone.text


def test_bin_weights_and_dummy_load(tiny_model_factory, hf_cache):
    path = tiny_model_factory("llama", safetensors=False)
    model, tok = hf_model(path, hf_cache)
    llm = LLM(path, load_format="pt", max_model_len=64)
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)[0]
    assert out.outputs[0].token_ids == hf_greedy(model, tok, "Hello", 8)
    dummy = LLM(path, load_format="dummy", max_model_len=64)
    w = dummy.llm_engine.executor.model_runner.model.model.layers[0].mlp.down_proj.weight
    assert w.abs().max() <= 1e-3 and w.abs().max() > 0
