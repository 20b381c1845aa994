"""vLLM 0.24's per-request sampling fields in the sampler and the engine: logit_bias,
allowed_token_ids, bad_words (token sequences), output_kind, extra_args.

Sampler-level tests compare against a reference written here on Python floats (vLLM's order:
allowed_token_ids whitelist, bad words, min_tokens, logit_bias, then penalties; logprobs raw);
engine-level tests run the tiny Llama greedily and check the documented effect on its tokens.
"""
from __future__ import annotations

import math

import pytest
import torch

from runner.engine.sampler import Sampler, SamplingRequest
from runner.engine.sampling_params import RequestOutputKind, SamplingParams

LOGITS = [2.0, 1.2, 0.3, -0.5, 1.7, -1.4, 0.9, 0.0]  # vocab 8, no ties


def _ref(logits, output, *, allowed=None, bad=(), bias=None, presence=0.0):
    """The processed logits of one row, token by token (vLLM 0.24's order)."""
    out = [float(v) for v in logits]
    if allowed is not None:
        out = [v if t in allowed else -math.inf for t, v in enumerate(out)]
    for seq in bad:
        prefix = seq[:-1]
        if len(prefix) <= len(output) and (not prefix or output[-len(prefix):] == prefix):
            out[seq[-1]] = -math.inf
    for t, b in (bias or {}).items():
        out[t] += b
    for t in set(output):
        out[t] -= presence
    return out


def _greedy(params, output=(), logits=LOGITS):
    req = SamplingRequest(params=params, prompt_token_ids=[1], output_token_ids=list(output))
    return Sampler()(torch.tensor([logits]), [req])[0]


def _argmax(values):
    return max(range(len(values)), key=lambda t: values[t])


def test_logit_bias_adds_to_the_logits_before_penalties():
    for bias in ({5: 100.0}, {0: -3.0, 3: 2.9}, {2: 1.75, 0: -0.1}):
        p = SamplingParams(temperature=0.0, logit_bias=bias, presence_penalty=1.5)
        tok = _greedy(p, output=[4, 1])
        assert tok.token_id == _argmax(_ref(LOGITS, [4, 1], bias=bias, presence=1.5))
        # logprobs stay raw (vLLM's default logprobs_mode): those of the model's logits
        raw = torch.log_softmax(torch.tensor(LOGITS), -1)[tok.token_id].item()
        assert tok.logprob == pytest.approx(raw, abs=1e-6)
    assert _greedy(SamplingParams(temperature=0.0, logit_bias={5: 100.0})).token_id == 5


def test_allowed_token_ids_restricts_greedy_and_random():
    p = SamplingParams(temperature=0.0, allowed_token_ids=[2, 3, 7])
    assert _greedy(p).token_id == _argmax(_ref(LOGITS, [], allowed={2, 3, 7})) == 2
    p = SamplingParams(temperature=1.0, seed=0, allowed_token_ids=[3, 5])
    reqs = [SamplingRequest(p, [1], [], generator=torch.Generator().manual_seed(i))
            for i in range(400)]
    toks = [t.token_id for t in Sampler()(torch.tensor([LOGITS] * 400), reqs)]
    assert set(toks) == {3, 5}
    # P(3) / P(5) = exp(-0.5 - -1.4): within a few standard errors
    frac = toks.count(3) / len(toks)
    expected = 1 / (1 + math.exp(-0.9))
    assert abs(frac - expected) < 4 * math.sqrt(expected * (1 - expected) / len(toks))


def test_bad_words_ban_the_last_token_after_the_rest():
    bad = [[0], [4, 6], [2, 4, 1]]
    p = SamplingParams(temperature=0.0)
    p._bad_words_token_ids = bad              # what update_from_tokenizer makes
    for output in ([], [4], [2, 4], [3, 2, 4], [6]):
        ref = _ref(LOGITS, list(output), bad=bad)
        assert _greedy(p, output).token_id == _argmax(ref), output
    # token 0 is always banned; after [2, 4] tokens 1 and 6 are too
    assert _greedy(p, []).token_id == 4
    ref = _ref(LOGITS, [2, 4], bad=bad)
    assert [t for t, v in enumerate(ref) if v == -math.inf] == [0, 1, 6]


# ---------------------------------------------------------------------- through the engine

@pytest.fixture(scope="module")
def llm(tiny_llama):
    from runner.engine import LLM
    return LLM(tiny_llama, device="cpu", max_model_len=128)


def _out(llm, **kw):
    return llm.generate(["Hello there"], SamplingParams(temperature=0.0, max_tokens=12, **kw),
                        use_tqdm=False)[0].outputs[0]


def test_engine_logit_bias_forces_a_token(llm):
    assert _out(llm, logit_bias={50: 100.0}).token_ids == [50] * 12


def test_engine_allowed_token_ids(llm):
    allowed = [7, 8, 9, 10, 11]
    toks = _out(llm, allowed_token_ids=allowed).token_ids
    assert len(toks) == 12 and set(toks) <= set(allowed)


def test_engine_bad_words_never_appear(llm):
    plain = _out(llm)
    tok = llm.get_tokenizer()
    # a two-token piece of what the model says unconstrained that tokenizes back to itself
    toks = plain.token_ids
    pair = next(toks[i:i + 2] for i in range(len(toks) - 1)
                if tok.encode(tok.decode(toks[i:i + 2]), add_special_tokens=False)
                == toks[i:i + 2] and not tok.decode(toks[i:i + 2]).startswith(" "))
    word = tok.decode(pair)
    p = SamplingParams(temperature=0.0, max_tokens=12, bad_words=[word])
    out = llm.generate(["Hello there"], p, use_tqdm=False)[0].outputs[0]
    seqs = p.bad_words_token_ids
    assert seqs[0] == pair and out.token_ids != plain.token_ids
    toks = out.token_ids
    for seq in seqs:
        for i in range(len(toks) - len(seq) + 1):
            assert toks[i:i + len(seq)] != seq, (seq, toks)


def test_engine_checks_token_ids_against_the_vocabulary(llm):
    with pytest.raises(ValueError, match="logit_bias contain out-of-vocab"):
        _out(llm, logit_bias={10 ** 6: 1.0})
    with pytest.raises(ValueError, match="allowed_token_ids"):
        _out(llm, allowed_token_ids=[1, 10 ** 6])
    with pytest.raises(ValueError, match="max_logprobs"):
        _out(llm, logprobs=-1)                   # the whole vocabulary > max_logprobs=20


def test_extra_args_are_kept(llm):
    p = SamplingParams(temperature=0.0, max_tokens=3, extra_args={"plugin": 1})
    assert p.clone().extra_args == {"plugin": 1}
    assert llm.generate("Hi", p, use_tqdm=False)[0].outputs[0].token_ids


def _stream(llm, kind, n=1):
    engine = llm.llm_engine
    p = SamplingParams(temperature=0.8 if n > 1 else 0.0, seed=3, n=n, max_tokens=6,
                       logprobs=1, prompt_logprobs=0, output_kind=kind)
    engine.add_request("r", "Hello there", p)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.request_id == "r"]
    return outs


@pytest.mark.parametrize("n", [1, 2])
def test_output_kind_streaming(llm, n):
    cumulative = _stream(llm, RequestOutputKind.CUMULATIVE, n)
    delta = _stream(llm, RequestOutputKind.DELTA, n)
    final = _stream(llm, RequestOutputKind.FINAL_ONLY, n)
    assert len(final) == 1 and final[0].finished
    assert len(cumulative) == len(delta) > 1 and delta[-1].finished
    last = cumulative[-1]
    assert [(c.token_ids, c.text) for c in final[0].outputs] == [
        (c.token_ids, c.text) for c in last.outputs]
    for i in range(n):
        pieces = [c for o in delta for c in o.outputs if c.index == i]
        full = next(c for c in last.outputs if c.index == i)
        assert sum((list(c.token_ids) for c in pieces), []) == list(full.token_ids)
        assert "".join(c.text for c in pieces) == full.text
        assert sum((c.logprobs for c in pieces), []) == full.logprobs
    # DELTA: the prompt's logprobs with the first output only
    assert delta[0].prompt_logprobs is not None
    assert all(o.prompt_logprobs is None for o in delta[1:])
    assert all(o.prompt_logprobs is not None for o in cumulative)


def test_skip_reading_prefix_cache(llm):
    stats = llm.llm_engine.scheduler.prefix_cache_stats
    prompt = {"prompt_token_ids": list(range(10, 60))}          # several full blocks
    p = SamplingParams(temperature=0.0, max_tokens=2)
    first = llm.generate(prompt, p, use_tqdm=False)[0].outputs[0].token_ids
    hits = stats["prefix_cache_hits"]
    llm.generate(prompt, p, use_tqdm=False)
    assert stats["prefix_cache_hits"] > hits                     # read from the cache
    hits = stats["prefix_cache_hits"]
    skip = SamplingParams(temperature=0.0, max_tokens=2, skip_reading_prefix_cache=True)
    out = llm.generate(prompt, skip, use_tqdm=False)[0].outputs[0].token_ids
    assert stats["prefix_cache_hits"] == hits and out == first   # recomputed, same tokens
