"""Beam search and best_of inside the engine, against HF transformers' beam search (CPU, fp32).

HF is the reference for tokens and for length-penalized scores, with early_stopping True, False
and "never", several length penalties, and with EOS reached (a model whose EOS is a token the
beams often produce) and not reached.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from runner.engine import LLM, BeamSearchParams, SamplingParams

PROMPTS = ["Paris is the capital", "Hello", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def models(tiny_model_factory, tmp_path_factory):
    """(plain model, model whose EOS is a token its beams produce early) with their HF twins."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = tiny_model_factory("llama_gqa")
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    # make EOS the second token of the best beam for the first prompt
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    hf.generation_config.eos_token_id = None
    beams = hf.generate(ids, num_beams=4, num_return_sequences=4, max_new_tokens=4,
                        do_sample=False, pad_token_id=0)
    eos = int(beams[0, ids.shape[1] + 1])
    dst = tmp_path_factory.mktemp("eos_model")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((dst / name).read_text())
        cfg["eos_token_id"] = eos
        (dst / name).write_text(json.dumps(cfg))
    hf_eos = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    return {"plain": ((src, hf, None), tok), "eos": ((str(dst), hf_eos, eos), tok)}


def hf_beams(hf, tok, prompt, width, n, max_new, lp, es, eos):
    ids = tok(prompt, return_tensors="pt").input_ids
    hf.generation_config.eos_token_id = eos
    with torch.no_grad():
        r = hf.generate(ids, num_beams=width, num_return_sequences=n, max_new_tokens=max_new,
                        do_sample=False, early_stopping=es, length_penalty=lp,
                        eos_token_id=eos, pad_token_id=0, output_scores=True,
                        return_dict_in_generate=True)
    seqs = []
    for row in r.sequences[:, ids.shape[1]:].tolist():
        if eos is not None and eos in row:
            row = row[:row.index(eos) + 1]        # HF pads after EOS
        seqs.append(row)
    return seqs, r.sequences_scores.float()


@pytest.mark.parametrize("which", ["plain", "eos"])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.6, -0.5])
def test_beam_search_equals_hf(models, which, early_stopping, length_penalty):
    (path, hf, eos), tok = models[which]
    llm = _llm(path)
    # "plain": EOS ignored (HF: no EOS token), so every hypothesis runs to max_tokens
    sp = SamplingParams(use_beam_search=True, best_of=4, n=3, temperature=0.0, max_tokens=9,
                        length_penalty=length_penalty, early_stopping=early_stopping,
                        ignore_eos=which == "plain")
    outs = llm.generate(PROMPTS, sp, use_tqdm=False)
    reached_eos = False
    for prompt, out in zip(PROMPTS, outs):
        ref, ref_scores = hf_beams(hf, tok, prompt, 4, 3, 9, length_penalty, early_stopping, eos)
        got = [c.token_ids for c in out.outputs]
        assert got == ref, (prompt, got, ref)
        scores = torch.tensor([c.cumulative_logprob / len(c.token_ids) ** length_penalty
                               for c in out.outputs])
        assert torch.allclose(scores, ref_scores, atol=1e-4)
        reached_eos |= any(c.finish_reason == "stop" for c in out.outputs)
        for c in out.outputs:
            assert c.finish_reason == ("stop" if c.token_ids[-1] == eos else "length")
    # with this EOS, EOS-ended hypotheses win when short ones are not penalized
    assert reached_eos == (which == "eos" and length_penalty < 1.0)


_LLMS: dict = {}


def _llm(path, **kw):
    key = (path, tuple(sorted(kw.items())))
    if key not in _LLMS:
        _LLMS[key] = LLM(path, max_model_len=128, block_size=4, **kw)
    return _LLMS[key]


def test_beams_share_prompt_blocks(models):
    (path, _, _), tok = models["plain"]
    llm = LLM(path, max_model_len=128, block_size=4)
    engine = llm.llm_engine
    prompt = {"prompt_token_ids": list(range(10, 70))}      # 60 tokens = 15 full blocks
    sp = SamplingParams(use_beam_search=True, best_of=4, n=4, temperature=0.0, max_tokens=8)
    engine.add_request("r", prompt, sp)
    total = engine.block_manager.num_blocks
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak = max(peak, total - engine.block_manager.num_free_blocks)
    independent = 4 * -(-(60 + 8) // 4)                     # 4 private copies: 68 blocks
    assert peak <= 15 + 4 * 3, peak                          # shared prompt + private tails
    assert peak < independent / 2
    assert engine.block_manager.num_free_blocks == total


def test_beam_search_under_preemption_matches_roomy_cache(models):
    (path, _, _), _ = models["eos"]
    sp = SamplingParams(use_beam_search=True, best_of=3, n=3, temperature=0.0, max_tokens=12)
    roomy = LLM(path, max_model_len=48, block_size=4)
    tight = LLM(path, max_model_len=48, block_size=4, num_gpu_blocks_override=20,
                max_num_batched_tokens=16)
    prompts = PROMPTS * 2
    a = roomy.generate(prompts, sp, use_tqdm=False)
    b = tight.generate(prompts, sp, use_tqdm=False)
    assert tight.llm_engine.get_stats()["num_preemptions"] > 0
    for x, y in zip(a, b):
        assert [c.token_ids for c in x.outputs] == [c.token_ids for c in y.outputs]
        for cx, cy in zip(x.outputs, y.outputs):
            assert abs(cx.cumulative_logprob - cy.cumulative_logprob) < 1e-4


def test_beam_search_api_takes_str_and_dict_prompts(models):
    # LLM.beam_search follows vLLM 0.24's algorithm, not HF's: its reference is in
    # tests/engine/test_beam_search_vllm.py; here only the prompt forms
    (path, hf, eos), tok = models["eos"]
    llm = _llm(path)
    res = llm.beam_search([PROMPTS[0], {"prompt": PROMPTS[1]}],
                          BeamSearchParams(beam_width=4, max_tokens=9))
    again = llm.beam_search([{"prompt_token_ids": tok(p).input_ids} for p in PROMPTS[:2]],
                            BeamSearchParams(beam_width=4, max_tokens=9))
    assert [[s.tokens for s in o.sequences] for o in res] == \
        [[s.tokens for s in o.sequences] for o in again]
    assert all(len(o.sequences) == 4 for o in res)


def test_best_of_returns_the_n_most_likely_of_best_of_samples(tiny_llama):
    llm = LLM(tiny_llama, max_model_len=96)
    common = dict(temperature=1.0, seed=11, max_tokens=10, ignore_eos=True)
    all5 = llm.generate("Hello", SamplingParams(n=5, **common), use_tqdm=False)[0].outputs
    best2 = llm.generate("Hello", SamplingParams(n=2, best_of=5, **common),
                         use_tqdm=False)[0].outputs
    expected = sorted(all5, key=lambda c: -c.cumulative_logprob)[:2]
    assert [c.token_ids for c in best2] == [c.token_ids for c in expected]
    assert [c.index for c in best2] == [0, 1]


@pytest.mark.parametrize("kwargs, field", [
    (dict(use_beam_search=True, best_of=1, temperature=0.0), "best_of"),
    (dict(use_beam_search=True, best_of=4, temperature=0.7), "temperature"),
    (dict(use_beam_search=True, best_of=4, temperature=0.0, top_p=0.9), "top_p"),
    (dict(use_beam_search=True, best_of=4, temperature=0.0, top_k=5), "top_k"),
    (dict(use_beam_search=True, best_of=4, temperature=0.0, early_stopping="sometimes"),
     "early_stopping"),
    (dict(use_beam_search=True, best_of=2, n=3, temperature=0.0), "best_of"),
    (dict(early_stopping=True), "early_stopping"),
    (dict(length_penalty=0.5), "length_penalty"),
])
def test_beam_rules(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_stop_strings_refused_with_beam_search(tiny_llama):
    llm = LLM(tiny_llama, max_model_len=64)
    sp = SamplingParams(use_beam_search=True, best_of=2, temperature=0.0, stop=["x"])
    with pytest.raises(ValueError, match="stop strings are not supported with beam search"):
        llm.generate("Hello", sp, use_tqdm=False)


def test_beam_group_that_cannot_fit_after_preemption_fails_clearly(models):
    """Beams preempted by recompute are computed again without sharing their blocks; when
    that can never fit the cache, the engine says so instead of preempting forever. Swapped
    out (the default), they keep their sharing and finish."""
    (path, _, _), _ = models["eos"]
    sp = SamplingParams(use_beam_search=True, best_of=3, n=3, temperature=0.0, max_tokens=12)
    kw = dict(max_model_len=48, block_size=4, num_gpu_blocks_override=14,
              max_num_batched_tokens=16)
    tight = LLM(path, preemption_mode="recompute", **kw)
    with pytest.raises(RuntimeError, match="beam search request .* needs .* KV blocks"):
        tight.generate(PROMPTS * 2, sp, use_tqdm=False)
    assert not tight.llm_engine.has_unfinished_requests()
    swapping = LLM(path, swap_space=0.01, **kw)
    outs = swapping.generate(PROMPTS * 2, sp, use_tqdm=False)
    assert all(o.finished for o in outs)
    assert swapping.llm_engine.get_stats()["num_swapped_out"] > 0
