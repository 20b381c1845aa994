"""Async output processing (disable_async_output_proc=False, the default): the same outputs as
synchronous processing, step() handing out each step's outputs one step later, stop strings
still ending a request in the step that produced it, aborts honoured for held-back outputs.
Async scheduling is off here (it reads each step's tokens a step later and processes them behind
the next forward itself: tests/engine/test_async_scheduling.py)."""
from __future__ import annotations

import pytest

from runner.engine import LLM, BeamSearchParams, SamplingParams

PROMPTS = ["The quick brown fox", "Paris is the capital of France and",
           "Hello world! How are you", "A paged KV cache stores keys", "Numbers like 12"]


@pytest.fixture(scope="module")
def engines(tiny_llama):
    # a small token budget mixes prefill chunks and decodes in one step
    kw = dict(seed=0, max_num_batched_tokens=24, max_num_seqs=4, async_scheduling=False)
    return (LLM(tiny_llama, **kw),
            LLM(tiny_llama, disable_async_output_proc=True, **kw))


def _flat(outputs):
    return [(o.prompt_token_ids,
             [(lp and {t: (round(v.logprob, 6), v.rank, v.decoded_token) for t, v in lp.items()})
              for lp in (o.prompt_logprobs or [])],
             [(c.index, c.text, c.token_ids, round(c.cumulative_logprob or 0, 6),
               c.finish_reason, c.stop_reason,
               [{t: (round(v.logprob, 6), v.rank, v.decoded_token) for t, v in lp.items()}
                for lp in (c.logprobs or [])]) for c in o.outputs])
            for o in outputs]


def test_async_and_sync_give_the_same_outputs(engines):
    async_llm, sync_llm = engines
    assert async_llm.llm_engine.async_output_proc and not sync_llm.llm_engine.async_output_proc
    ref = sync_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12),
                            use_tqdm=False)
    # a stop string taken from the middle of a greedy completion, so it really fires
    text = ref[1].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    cases = [
        SamplingParams(temperature=0, max_tokens=12, logprobs=3, prompt_logprobs=2),
        SamplingParams(temperature=0.9, seed=5, n=2, max_tokens=10, logprobs=1),
        SamplingParams(temperature=0, max_tokens=20, stop=[stop]),
        SamplingParams(temperature=0, max_tokens=20, stop=[stop],
                       include_stop_str_in_output=True),
        SamplingParams(temperature=0.7, top_p=0.9, seed=3, best_of=3, n=2, max_tokens=8),
    ]
    for sp in cases:
        a = async_llm.generate(PROMPTS, sp, use_tqdm=False)
        s = sync_llm.generate(PROMPTS, sp, use_tqdm=False)
        assert _flat(a) == _flat(s), sp
    stopped = async_llm.generate(PROMPTS[1], cases[2], use_tqdm=False)[0].outputs[0]
    assert stopped.stop_reason == stop and stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < 20
    beams = BeamSearchParams(beam_width=3, max_tokens=8)
    a = async_llm.beam_search([{"prompt": p} for p in PROMPTS[:2]], beams)
    s = sync_llm.beam_search([{"prompt": p} for p in PROMPTS[:2]], beams)
    assert [[q.tokens for q in b.sequences] for b in a] == \
        [[q.tokens for q in b.sequences] for b in s]


def _stream(llm, params, prompts):
    engine = llm.llm_engine
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    steps = []
    while engine.has_unfinished_requests():
        steps.append([(o.request_id, list(o.outputs[0].token_ids), o.finished)
                      for o in engine.step()])
    return steps


def test_step_hands_out_each_steps_outputs_one_step_later(engines):
    async_llm, sync_llm = engines
    sp = SamplingParams(temperature=0, max_tokens=4)
    prompts = ["Hello world", "The quick"]     # short: both prefill in the first step
    sync_steps = _stream(sync_llm, sp, prompts)
    async_steps = _stream(async_llm, sp, prompts)
    assert [len(x[0][1]) for x in sync_steps] == [1, 2, 3, 4]
    # the same outputs, shifted by one step: nothing after the first step, and one more
    # step (with nothing scheduled) to hand out the last outputs
    assert async_steps == [[]] + sync_steps
    assert async_steps[-1][0][2] and async_steps[-1][1][2]     # finished
    assert not async_llm.llm_engine.has_unfinished_requests()


def test_an_aborted_request_gets_no_held_back_output(engines):
    engine = engines[0].llm_engine
    sp = SamplingParams(temperature=0, max_tokens=6)
    engine.add_request("a", "Hello world", sp)
    engine.add_request("b", "The quick", sp)
    assert engine.step() == []          # step 1's outputs are held back...
    engine.abort_request("a")            # ...and "a" is aborted before they are handed out
    seen = []
    while engine.has_unfinished_requests():
        seen += [o.request_id for o in engine.step()]
    assert "a" not in seen and seen.count("b") == 6


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("fail_after_overlap", [False, True])
def test_outputs_held_back_survive_an_engine_failure(engines, tiny_llama, monkeypatch,
                                                     fail_after_overlap, async_scheduling):
    """A request that finished in the last good step is finished work: when the next step
    raises, take_held_outputs() still has its output (the runner writes it to
    predictions.jsonl before failing). With async scheduling that step's tokens were still in
    flight when the next one failed (before its forward, or after reading them back)."""
    engine = (LLM(tiny_llama, seed=0) if async_scheduling else engines[0]).llm_engine
    runner = engine.executor.model_runner
    sample = "sample_async" if async_scheduling else "sample"
    real_launch, real_sample = runner.launch, getattr(runner, sample)
    calls = []

    def flaky_launch(out, send=None):
        calls.append(1)
        if len(calls) == 3 and not fail_after_overlap:
            raise RuntimeError("the GPU fell off the bus")
        return real_launch(out, send)

    def flaky_sample(step, ended=()):
        if len(calls) == 3:           # the last step's output work ran meanwhile
            raise RuntimeError("the GPU fell off the bus")
        return real_sample(step, ended)

    monkeypatch.setattr(runner, "launch", flaky_launch)
    monkeypatch.setattr(runner, sample, flaky_sample)
    engine.add_request("short", "Hello world", SamplingParams(temperature=0, max_tokens=2))
    engine.add_request("long", "The quick", SamplingParams(temperature=0, max_tokens=10))
    assert engine.step() == []
    assert [o.finished for o in engine.step()] == [False, False]     # step 1's outputs
    with pytest.raises(RuntimeError, match="fell off the bus"):
        engine.step()
    held = {o.request_id: o for o in engine.take_held_outputs()}
    assert held["short"].finished and len(held["short"].outputs[0].token_ids) == 2
    assert not held["long"].finished
    assert engine.take_held_outputs() == []
    engine.abort_request("long")
    assert not engine.has_unfinished_requests()


def test_an_output_processing_error_is_not_a_worker_failure(tiny_model_factory, monkeypatch):
    """With tensor parallelism the deferred work runs between a step's launch and its
    collectives' end: its own error is raised as is, and the workers stay usable."""
    from runner.engine.output_processor import OutputProcessor

    llm = LLM(tiny_model_factory("llama_gqa"), tensor_parallel_size=2, dtype="float32",
              seed=0, device="cpu")
    try:
        sp = SamplingParams(temperature=0, max_tokens=6)
        ref = llm.generate(PROMPTS[:2], sp, use_tqdm=False)
        real = OutputProcessor._append_text
        calls = []

        def broken(seq, det, token_id):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("detokenizer broke")
            return real(seq, det, token_id)

        monkeypatch.setattr(OutputProcessor, "_append_text", staticmethod(broken))
        with pytest.raises(RuntimeError, match="^detokenizer broke$"):
            llm.generate(PROMPTS[:2], sp, use_tqdm=False)
        monkeypatch.setattr(OutputProcessor, "_append_text", staticmethod(real))
        assert llm.llm_engine.executor.failure is None
        again = llm.generate(PROMPTS[:2], sp, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in ref]
    finally:
        llm.llm_engine.shutdown()
