"""LLM.beam_search against a pure reference of vLLM 0.24's algorithm written here on HF
transformers' forward of the same weights (fp32, CPU): same tokens, same cum_logprobs, and the
output fields vLLM fills (EOS kept, text with special tokens, each step's logprobs dict,
finish_reason / stop_reason None).

The reference (vllm/entrypoints/generate/beam_search, read, not copied): each step every live
beam proposes its 2 * beam_width most likely tokens; proposals of the tokenizer's EOS (unless
ignore_eos) complete; the others, sorted by cum_logprob / len ** length_penalty (len with the
prompt, without a final EOS), give the next beam_width beams; after max_tokens steps the live
beams complete; the best beam_width completed ones are returned.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from runner.engine import LLM, BeamSearchParams

PROMPTS = ["Paris is the capital", "Hello", "The quick brown fox jumps over"]


def _score(tokens, cum, eos, lp):
    n = len(tokens) - (1 if eos is not None and tokens[-1] == eos else 0)
    return cum / (n ** lp)


@torch.no_grad()
def ref_beam_search(hf, prompt_ids, width, max_tokens, eos, lp=1.0, ignore_eos=False):
    """[(tokens, cum_logprob, [top-2w ids of each step])] best first."""
    beams = [(list(prompt_ids), 0.0, [])]
    completed = []
    for _ in range(max_tokens):
        if not beams:
            break
        new = []
        for tokens, cum, steps in beams:
            logits = hf(torch.tensor([tokens])).logits[0, -1].float()
            top = torch.log_softmax(logits, -1).topk(2 * width)
            ids = top.indices.tolist()
            for t, v in zip(ids, top.values.tolist()):
                beam = (tokens + [t], cum + v, steps + [ids])
                if t == eos and not ignore_eos:
                    completed.append(beam)
                else:
                    new.append(beam)
        new.sort(key=lambda b: _score(b[0], b[1], eos, lp), reverse=True)
        beams = new[:width]
    completed += beams
    completed.sort(key=lambda b: _score(b[0], b[1], eos, lp), reverse=True)
    return completed[:width]


@pytest.fixture(scope="module")
def models(tiny_model_factory, tmp_path_factory):
    """The plain tiny Llama and a copy whose EOS (config, generation config and tokenizer) is
    a token the best beam proposes at its second step, with their HF twins."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = tiny_model_factory("llama")
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    ids = tok(PROMPTS[0]).input_ids
    best = ref_beam_search(hf, ids, 3, 4, eos=None)[0]
    eos = best[2][1][2]                       # the 3rd proposal of the best beam's 2nd step
    dst = tmp_path_factory.mktemp("beam_eos_model")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((dst / name).read_text())
        cfg["eos_token_id"] = eos
        (dst / name).write_text(json.dumps(cfg))
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["eos_token"] = tok.convert_ids_to_tokens(eos)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert AutoTokenizer.from_pretrained(dst).eos_token_id == eos
    return {"plain": (src, hf, tok.eos_token_id), "eos": (str(dst), hf, eos)}


def _llm(path):
    return LLM(path, device="cpu", max_model_len=128)


@pytest.mark.parametrize("which", ["plain", "eos"])
@pytest.mark.parametrize("width,length_penalty,ignore_eos", [
    (3, 1.0, False), (2, 0.5, False), (4, 2.0, False), (3, 1.0, True)])
def test_beam_search_equals_the_reference(models, which, width, length_penalty, ignore_eos):
    path, hf, eos = models[which]
    llm = _llm(path)
    tok = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tok(p).input_ids} for p in PROMPTS]
    params = BeamSearchParams(beam_width=width, max_tokens=7, length_penalty=length_penalty,
                              ignore_eos=ignore_eos)
    outs = llm.beam_search(prompts, params)
    ended_at_eos = 0
    for prompt, out in zip(prompts, outs):
        ref = ref_beam_search(hf, prompt["prompt_token_ids"], width, 7, eos, length_penalty,
                              ignore_eos)
        assert [s.tokens for s in out.sequences] == [r[0] for r in ref]
        for s, (tokens, cum, steps) in zip(out.sequences, ref):
            assert s.cum_logprob == pytest.approx(cum, abs=1e-4)
            gen = len(tokens) - len(prompt["prompt_token_ids"])
            # each step's logprobs dict: the parent's 2 * width best tokens, raw logprobs
            assert len(s.logprobs) == gen
            assert [sorted(d) for d in s.logprobs] == [sorted(ids) for ids in steps]
            chosen = sum(d[t].logprob for d, t in zip(s.logprobs, tokens[-gen:]))
            assert chosen == pytest.approx(cum, abs=1e-4)
            assert s.text == tok.decode(s.tokens)          # special tokens kept, as vLLM
            assert s.finish_reason is None and s.stop_reason is None
            ended_at_eos += tokens[-1] == eos
    if which == "eos" and not ignore_eos and length_penalty <= 1.0:   # (2.0 favours long)
        assert ended_at_eos > 0                           # the EOS case was exercised
    if ignore_eos:
        assert all(len(s.tokens) == len(p["prompt_token_ids"]) + 7
                   for p, o in zip(prompts, outs) for s in o.sequences)


def test_eos_is_kept_in_tokens_and_text(models):
    path, hf, eos = models["eos"]
    llm = _llm(path)
    tok = llm.get_tokenizer()
    prompt = {"prompt_token_ids": tok(PROMPTS[0]).input_ids}
    # length_penalty 0: scores are cum_logprobs, so the short EOS beam wins
    seqs = llm.beam_search([prompt], BeamSearchParams(beam_width=3, max_tokens=6,
                                                      length_penalty=0.0))[0].sequences
    ended = [s for s in seqs if s.tokens[-1] == eos]
    assert ended and tok.convert_ids_to_tokens(eos) in tok.convert_ids_to_tokens(
        ended[0].tokens)
    assert ended[0].text.endswith(tok.decode([eos]))


def test_str_prompts_equal_token_prompts(models):
    path, hf, _ = models["plain"]
    llm = _llm(path)
    tok = llm.get_tokenizer()
    a = llm.beam_search(PROMPTS[:2], BeamSearchParams(beam_width=2, max_tokens=4))
    b = llm.beam_search([{"prompt_token_ids": tok(p).input_ids} for p in PROMPTS[:2]],
                        BeamSearchParams(beam_width=2, max_tokens=4))
    assert [[s.tokens for s in o.sequences] for o in a] == \
        [[s.tokens for s in o.sequences] for o in b]
    # a bare list[int] is one prompt (vllm.inputs' rule), not a list of prompts
    one = llm.beam_search(tok(PROMPTS[0]).input_ids, BeamSearchParams(beam_width=2, max_tokens=4))
    assert [[s.tokens for s in o.sequences] for o in one] == \
        [[s.tokens for s in o.sequences] for o in a[:1]]


def test_temperature_adds_one_drawn_candidate(models):
    """vLLM's beam search at temperature > 0: each beam's proposals are its 2 * width best
    tokens plus one drawn at that temperature (its dict then has 2 * width + 1 entries)."""
    path, _, _ = models["plain"]
    params = BeamSearchParams(beam_width=2, max_tokens=6, temperature=2.0)
    runs = [LLM(path, device="cpu", max_model_len=128, seed=0).beam_search(PROMPTS, params)
            for _ in range(2)]
    assert [[s.tokens for s in o.sequences] for o in runs[0]] == \
        [[s.tokens for s in o.sequences] for o in runs[1]]          # the engine seed decides
    sizes = set()
    for out in runs[0]:
        for s in out.sequences:
            gen = s.tokens[-len(s.logprobs):]
            assert s.cum_logprob == pytest.approx(
                sum(d[t].logprob for d, t in zip(s.logprobs, gen)), abs=1e-5)
            for d in s.logprobs:
                sizes.add(len(d))
                ranks = sorted(lp.rank for lp in d.values())
                assert ranks[:4] == [1, 2, 3, 4] and all(r > 4 for r in ranks[4:])
                best = sorted(d.values(), key=lambda lp: -lp.logprob)
                assert [lp.rank for lp in best] == ranks              # ranks follow logprobs
    assert sizes <= {4, 5} and 5 in sizes
