"""Async scheduling (async_scheduling=True, the default): a step's tokens are read back only after
the next step is launched, with placeholders in between. Against the same engine with
async_scheduling=False: the same tokens, logprobs, texts and finish reasons for greedy and seeded
requests (stop strings, stop tokens that end a sequence while its next step is in flight, length
limits, n > 1, prompt logprobs, beams, penalties), under preemption and with tensor parallelism;
aborts and failures while a step is in flight (held outputs after a failure:
tests/engine/test_async_output.py, both modes); no step wasted on a sequence its length
ends."""
from __future__ import annotations

import pytest

from runner.engine import LLM, BeamSearchParams, SamplingParams
from runner.engine.sequence import PLACEHOLDER_TOKEN_ID

PROMPTS = ["The quick brown fox", "Paris is the capital of France and",
           "Hello world! How are you", "A paged KV cache stores keys", "Numbers like 12"]


@pytest.fixture(scope="module")
def engines(tiny_llama):
    # a small token budget mixes prefill chunks and decodes in one step
    kw = dict(seed=0, max_num_batched_tokens=24, max_num_seqs=4)
    return LLM(tiny_llama, **kw), LLM(tiny_llama, async_scheduling=False, **kw)


def _assert_same(outs, refs, atol=1e-4):
    """Tokens, texts, ranks and finish reasons equal; logprobs within `atol` (a step's batch
    differs by the sequences that ended meanwhile, which moves float32 sums in the last
    bits)."""
    def same_lps(xs, ys):
        assert len(xs or []) == len(ys or [])
        for x, y in zip(xs or [], ys or []):
            assert (x is None) == (y is None)
            if x is not None:
                assert {t: (v.rank, v.decoded_token) for t, v in x.items()} == \
                    {t: (v.rank, v.decoded_token) for t, v in y.items()}
                assert all(abs(x[t].logprob - y[t].logprob) < atol for t in x)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.prompt_token_ids == r.prompt_token_ids
        same_lps(o.prompt_logprobs, r.prompt_logprobs)
        assert [(c.index, c.text, c.token_ids, c.finish_reason, c.stop_reason)
                for c in o.outputs] == [(c.index, c.text, c.token_ids, c.finish_reason,
                                         c.stop_reason) for c in r.outputs]
        for c, d in zip(o.outputs, r.outputs):
            assert abs((c.cumulative_logprob or 0) - (d.cumulative_logprob or 0)) < atol
            same_lps(c.logprobs, d.logprobs)


def _run(llm, params):
    engine = llm.llm_engine
    before = engine.stats["num_async_steps"]
    out = llm.generate(PROMPTS, params, use_tqdm=False)
    return out, engine.stats["num_async_steps"] - before


def test_same_outputs_as_synchronous_scheduling(engines):
    async_llm, sync_llm = engines
    assert async_llm.llm_engine.async_scheduling and not sync_llm.llm_engine.async_scheduling
    ref = sync_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16),
                            use_tqdm=False)
    # a stop string and a stop token from the middle of greedy completions, so they fire
    text = ref[1].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    stop_token = ref[0].outputs[0].token_ids[5]
    cases = [
        SamplingParams(temperature=0, max_tokens=16, logprobs=3),
        SamplingParams(temperature=0, max_tokens=16, prompt_logprobs=2, logprobs=1),
        SamplingParams(temperature=0, max_tokens=30, stop=[stop]),
        SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_token]),
        SamplingParams(temperature=0.9, seed=5, n=2, max_tokens=10, logprobs=1),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=3, best_of=3, n=2,
                       max_tokens=8),
        SamplingParams(temperature=0.8, seed=7, max_tokens=12, min_tokens=4,
                       repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2),
    ]
    for sp in cases:
        a, async_steps = _run(async_llm, sp)
        s, sync_steps = _run(sync_llm, sp)
        _assert_same(a, s)
        assert async_steps > 0 and sync_steps == 0, sp
    # the stop token really ended a sequence early, while its next step was in flight
    stopped = [o.outputs[0] for o in _run(async_llm, cases[3])[0]]
    assert any(c.stop_reason == stop_token and len(c.token_ids) < 30 for c in stopped)
    # ... and no placeholder is ever handed out
    assert all(PLACEHOLDER_TOKEN_ID not in c.token_ids for o in a for c in o.outputs)
    beams = BeamSearchParams(beam_width=3, max_tokens=8)
    a = async_llm.beam_search([{"prompt": p} for p in PROMPTS[:2]], beams)
    s = sync_llm.beam_search([{"prompt": p} for p in PROMPTS[:2]], beams)
    assert [[q.tokens for q in b.sequences] for b in a] == \
        [[q.tokens for q in b.sequences] for b in s]


def test_same_outputs_under_preemption(tiny_llama, monkeypatch):
    """A cache of 12 blocks of 4 tokens for 5 requests of up to 40 tokens: sequences are
    preempted and recomputed, some while their last token is in flight, and one of those is
    ended by that token (it leaves the waiting queue in Scheduler.update_from_output)."""
    from runner.engine.scheduler import Scheduler
    dropped = []
    real_update = Scheduler.update_from_output

    def spy(self, out, runner_out):
        in_flight = [q for q in self.waiting if q.placeholder_step is not None]
        groups = real_update(self, out, runner_out)
        ended = [q for q in in_flight if q.is_finished()]
        assert not any(q in self.waiting for q in ended)
        dropped.extend(ended)
        return groups

    monkeypatch.setattr(Scheduler, "update_from_output", spy)
    kw = dict(seed=0, max_num_batched_tokens=32, max_num_seqs=5, block_size=4,
              num_gpu_blocks_override=12, max_model_len=48)
    cases = [SamplingParams(temperature=0, max_tokens=30, logprobs=2),
             [SamplingParams(temperature=0, max_tokens=m) for m in (12, 8, 5, 6, 4)]]
    for sp in cases:
        outs = []
        for async_scheduling in (True, False):
            llm = LLM(tiny_llama, async_scheduling=async_scheduling, **kw)
            outs.append(llm.generate(PROMPTS, sp, use_tqdm=False))
            stats = llm.llm_engine.get_stats()
            assert stats["num_preemptions"] > 0
            assert (stats["num_async_steps"] > 0) == async_scheduling
            assert not llm.llm_engine.scheduler.has_unfinished_seqs()
        _assert_same(outs[0], outs[1])
    assert dropped and all(q.is_finished() for q in dropped)


def test_a_length_limit_costs_no_extra_step(engines):
    """A sequence whose placeholder reaches max_tokens is not scheduled again: the same number
    of forward passes as synchronous scheduling (and, like async output processing, one step()
    call more to hand out the last outputs)."""
    steps = []
    for llm in engines:
        engine = llm.llm_engine
        before = engine.stats["num_steps"]
        engine.add_request("one", "Hello world", SamplingParams(temperature=0, max_tokens=5))
        calls = 0
        while engine.has_unfinished_requests():
            engine.step()
            calls += 1
        steps.append((engine.stats["num_steps"] - before, calls))
    assert steps == [(5, 6), (5, 6)]


def test_abort_while_a_step_is_in_flight(engines):
    async_llm, sync_llm = engines
    sp = SamplingParams(temperature=0, max_tokens=12)
    ref = sync_llm.generate(PROMPTS[:1], sp, use_tqdm=False)[0]
    engine = async_llm.llm_engine
    engine.add_request("keep", PROMPTS[0], sp)
    engine.add_request("drop", PROMPTS[1], sp)
    seen = engine.step() + engine.step()
    assert engine._inflight is not None            # step 2's tokens are not read yet
    engine.abort_request("drop")
    while engine.has_unfinished_requests():
        seen += engine.step()
    finals = [o for o in seen if o.finished]
    assert [o.request_id for o in finals] == ["keep"]
    assert finals[0].outputs[0].token_ids == ref.outputs[0].token_ids
    assert all(o.request_id == "keep" for o in seen[seen.index(finals[0]) - 1:])
    assert not engine.scheduler.has_unfinished_seqs()


def test_tensor_parallel_broadcasts_the_unread_tokens(tiny_model_factory):
    """tp=2 (gloo): rank 0 samples; the other rank gets each step's input ids by broadcast.
    Same greedy tokens as tp=1 without async scheduling, logprobs within 1e-4."""
    path = tiny_model_factory("llama_gqa")
    sp = SamplingParams(temperature=0, max_tokens=20, logprobs=2)
    kw = dict(dtype="float32", seed=0, device="cpu", max_num_batched_tokens=16, max_num_seqs=4)
    ref = LLM(path, async_scheduling=False, **kw).generate(PROMPTS, sp, use_tqdm=False)
    llm = LLM(path, tensor_parallel_size=2, **kw)
    try:
        out = llm.generate(PROMPTS, sp, use_tqdm=False)
        assert llm.llm_engine.stats["num_async_steps"] > 0
    finally:
        llm.llm_engine.shutdown()
    for a, b in zip(ref, out):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert x.keys() == y.keys()
            assert all(abs(x[t].logprob - y[t].logprob) < 1e-4 for t in x)


def test_async_scheduling_must_be_a_bool(tiny_llama):
    with pytest.raises(ValueError, match="async_scheduling must be True or False, got 'no'"):
        LLM(tiny_llama, async_scheduling="no")


@pytest.mark.parametrize("failing", ["a", "b"])
def test_an_output_processing_failure_leaves_a_usable_engine(tiny_llama, monkeypatch,
                                                             failing):
    """Processing a step's read-back tokens fails half-way (the first or the second request's
    text): every token is already in the scheduler's books, so the engine goes on; the failed
    step's positions are computed again and both requests finish like a clean run."""
    from runner.engine.output_processor import OutputProcessor
    llm = LLM(tiny_llama, seed=0)
    engine = llm.llm_engine
    sp = SamplingParams(temperature=0, max_tokens=10, stop=["never-in-this-text"])
    ref = [(o.outputs[0].token_ids, o.outputs[0].text)
           for o in llm.generate(["Hello world", "The quick"], sp, use_tqdm=False)]
    engine.add_request("a", "Hello world", sp)
    engine.add_request("b", "The quick", sp)
    engine.step()
    real = OutputProcessor._append_text

    def broken(seq, det, token_id):
        if seq.request_id == failing:
            raise RuntimeError("detokenizer broke")
        return real(seq, det, token_id)

    monkeypatch.setattr(OutputProcessor, "_append_text", staticmethod(broken))
    with pytest.raises(RuntimeError, match="detokenizer broke"):
        engine.step()
    monkeypatch.setattr(OutputProcessor, "_append_text", staticmethod(real))
    finals = {}
    for _ in range(50):
        if not engine.has_unfinished_requests():
            break
        finals.update({o.request_id: o for o in engine.step() if o.finished})
    assert sorted(finals) == ["a", "b"]
    assert [(finals[r].outputs[0].token_ids, finals[r].outputs[0].text) for r in "ab"] == ref


def test_a_failed_read_back_names_the_lost_requests(tiny_llama, monkeypatch):
    """Reading a step's tokens back fails: the sequences whose token was in it cannot go on
    (their next input is gone); the next step() names them and the fix (abort them) instead
    of computing on a placeholder, and after the abort the engine goes on."""
    llm = LLM(tiny_llama, seed=0)
    engine = llm.llm_engine
    runner = engine.executor.model_runner
    sp = SamplingParams(temperature=0, max_tokens=10)
    engine.add_request("a", "Hello world", sp)
    engine.add_request("b", "The quick", sp)
    engine.step()
    real = runner.finish

    def broken(pending):
        raise RuntimeError("the copy to the host failed")

    monkeypatch.setattr(runner, "finish", broken)
    with pytest.raises(RuntimeError, match="copy to the host failed"):
        engine.step()
    monkeypatch.setattr(runner, "finish", real)
    with pytest.raises(RuntimeError, match="request 'a' has a token whose step was lost.*Abort"):
        engine.step()
    engine.abort_request(["a", "b"])
    while engine.has_unfinished_requests():
        engine.step()
    out = llm.generate(["Hello world"], sp, use_tqdm=False)[0]     # the engine goes on
    assert out.finished and len(out.outputs[0].token_ids) == 10
