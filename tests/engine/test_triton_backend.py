"""The engine on its Triton kernels (kernel_backend='triton') equals HF transformers' greedy tokens.

On a machine without a GPU the kernels run under TRITON_INTERPRET=1 (set in tests/conftest.py),
so CI checks the kernels' integration (cache writes by slot, chunked prefill over a cached prefix,
decode, fused norms, rotary) inside the real engine, not only op by op.
"""
from __future__ import annotations

import pytest
import torch

from runner.engine import LLM, SamplingParams


# one decoder serves the Llama relatives: Qwen2 adds q/k/v biases, Qwen3 the q/k RMSNorm
# kernels on [T * heads, head_dim] rows before the in-place rotary kernel
@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2", "qwen3"])
def test_triton_backend_greedy_equals_hf(tiny_model_factory, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = tiny_model_factory(arch)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    tok = AutoTokenizer.from_pretrained(path)
    prompts = ["Paris is the capital", "The quick brown fox jumps over the lazy dog and", "Hi"]
    # 8-token budget: prompts are chunked, so prefill attends over cached prefixes
    llm = LLM(path, max_num_batched_tokens=8, block_size=4, max_model_len=64,
              kernel_backend="triton")
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                        use_tqdm=False)
    assert llm.llm_engine.get_stats()["kernel_backend"] == "triton"
    for prompt, out in zip(prompts, outs):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=2)
        assert out.outputs[0].token_ids == ref[0, ids.shape[1]:].tolist(), prompt
