"""`del llm` frees the engine at once, as in vLLM: no reference cycle keeps an LLM, its engine,
its model runner or its KV cache alive until a full garbage collection. The garbage collector is
off while each case runs, so only reference counting can free them; a cycle anywhere (engine
control, stat logging, LoRA manager, pooling runner) leaves a weak reference alive."""
from __future__ import annotations

import gc
import weakref

import pytest

from runner.engine import LLM, SamplingParams
from runner.engine.lora.request import LoRARequest
from runner.engine.sampling_params import BeamSearchParams
from tests.engine.lora_utils import ATTN, write_adapter


def _assert_freed_by_refcount(build, use):
    """build() -> LLM; use(llm) runs it; then with the collector off `del` must free it all."""
    warm = build()          # first build in a process imports modules; keep that out of the case
    use(warm)
    del warm
    gc.collect()
    gc.disable()
    try:
        llm = build()
        use(llm)
        engine = llm.llm_engine if llm.llm_engine is not None else llm.pooling_runner
        refs = {"LLM": weakref.ref(llm), "engine": weakref.ref(engine)}
        for name in ("executor", "scheduler", "output_processor"):
            part = getattr(engine, name, None)
            if part is not None:
                refs[name] = weakref.ref(part)
        del llm, engine, part
        alive = sorted(name for name, ref in refs.items() if ref() is not None)
    finally:
        gc.enable()
        gc.collect()
    assert alive == [], f"still alive after del without garbage collection: {alive}"


def _generate(llm):
    llm.generate(["The quick brown fox"], SamplingParams(temperature=0, max_tokens=4),
                 use_tqdm=False)


def test_generative_engine_with_stats_sleep_and_profiler(tiny_llama, tmp_path):
    def build():
        return LLM(tiny_llama, device="cpu", max_model_len=64, disable_log_stats=False,
                   enable_sleep_mode=True,
                   profiler_config={"profiler": "torch", "torch_profiler_dir": str(tmp_path)})

    def use(llm):
        _generate(llm)
        llm.get_metrics()
        llm.chat([{"role": "user", "content": "hi"}],
                 SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)

    _assert_freed_by_refcount(build, use)


def test_lora_engine(tiny_model_factory, tmp_path):
    base = tiny_model_factory("llama_gqa")
    adapter = write_adapter(tmp_path / "a", base, ATTN, r=4, lora_alpha=8, seed=1)

    def build():
        return LLM(base, device="cpu", enable_lora=True, max_lora_rank=8, max_model_len=64)

    def use(llm):
        llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False,
                     lora_request=LoRARequest("a", 1, adapter))

    _assert_freed_by_refcount(build, use)


def test_pooling_engine(tiny_bert):
    def build():
        return LLM(tiny_bert, device="cpu")

    def use(llm):
        llm.embed(["a short sentence"], use_tqdm=False)

    _assert_freed_by_refcount(build, use)


@pytest.mark.parametrize("api", ["beam_search", "set_tokenizer"])
def test_beam_search_and_tokenizer_swap(tiny_llama, api):
    def build():
        return LLM(tiny_llama, device="cpu", max_model_len=64)

    def use(llm):
        if api == "beam_search":
            llm.beam_search([{"prompt": "hello"}], BeamSearchParams(beam_width=2, max_tokens=3))
        else:
            llm.set_tokenizer(llm.get_tokenizer())
            _generate(llm)

    _assert_freed_by_refcount(build, use)
