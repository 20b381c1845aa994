"""The engine with a real tokenizer file from PyPI: Mistral's SentencePiece model
(mistral_common/data/tokenizer.model.v1 in the mistral-common wheel, 32,000 pieces; extracted
by scripts/install.sh), on a tiny random Llama (with
model_type "mistral", transformers would route tokenizer loading through mistral-common's own
format, which needs more packages; the tokenizer file is what this test is about).

Prompt tokenization must equal the HF tokenizer's, greedy tokens HF's generate, and the
incrementally detokenized text `tokenizer.decode` of the same ids (SentencePiece's leading
spaces and byte fallback are where incremental decoding usually goes wrong).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from runner.engine import LLM, SamplingParams

PROMPTS = ["Hello world, Paris is the capital of France.", "  two leading spaces",
           "Zürich — 1999: naïve café ☕", "def f(x):\n    return x"]


@pytest.fixture(scope="module")
def mistral_model(tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="sentencepiece (test extra) is not installed")
    cache = os.environ.get("RUNNER_CACHE_DIR", os.path.expanduser("~/.cache/runner"))
    sp_model = os.path.join(cache, "assets", "mistral-tokenizer.model.v1")
    if not os.path.isfile(sp_model):
        pytest.skip(f"{sp_model} is missing: scripts/install.sh extracts it from the "
                    "mistral-common wheel")
    from tests.tiny_models import make_tiny_model
    path = tmp_path_factory.mktemp("mistral_real_tok")
    make_tiny_model(path, "llama_gqa", vocab_size=32000)
    for name in os.listdir(path):             # replace the tiny BPE with the real tokenizer
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            os.remove(path / name)
    shutil.copy(sp_model, path / "tokenizer.model")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "legacy": False}))
    return str(path)


def test_real_sentencepiece_tokenizer_end_to_end(mistral_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(mistral_model)
    assert len(tok) == 32000
    hf = AutoModelForCausalLM.from_pretrained(mistral_model, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    llm = LLM(mistral_model, max_model_len=128, max_num_batched_tokens=16, block_size=4)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                        use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        ids = tok(prompt).input_ids
        assert out.prompt_token_ids == ids
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                              pad_token_id=0)[0, len(ids):].tolist()
        comp = out.outputs[0]
        assert comp.token_ids == ref, prompt
        # text continues the prompt, as vLLM's does: a leading "▁" piece keeps its space,
        # which decoding the output ids on their own would strip
        full = tok.decode(ids + comp.token_ids, skip_special_tokens=True)
        assert comp.text == full[len(tok.decode(ids, skip_special_tokens=True)):]


def test_real_tokenizer_stop_string_cuts_text(mistral_model):
    llm = LLM(mistral_model, max_model_len=128)
    base = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=24,
                                                      ignore_eos=True), use_tqdm=False)[0]
    text = base.outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=24,
                                                     ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"
