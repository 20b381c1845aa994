"""Serving LoRA adapters by name (serve.lora_modules, vLLM's --lora-modules NAME=PATH): GET
/v1/models lists each adapter with the base model as its parent, a completion whose "model" is
the adapter's name equals LLM.generate with that LoRARequest (and differs from the base), the
base name still runs the base model, and an unknown name is a 404. The flag form translates to
the config override."""
from __future__ import annotations

import httpx
import pytest

from runner.serve.__main__ import lora_modules_flag
from tests.engine.lora_utils import write_adapter
from tests.serve.conftest import ENGINE_KWARGS, MODEL_NAME, running_server


def test_lora_modules_flag_becomes_the_config_override():
    assert lora_modules_flag(["--lora-modules", "sql=/a", "chat=/b", "model=local"]) == \
        ["model=local", "serve.lora_modules=['sql=/a','chat=/b']"]
    assert lora_modules_flag(["--lora-modules=sql=/a"]) == ["serve.lora_modules=['sql=/a']"]


def test_bad_lora_modules_entries():
    from runner.serve.config import lora_requests
    with pytest.raises(ValueError, match="is not NAME=PATH"):
        lora_requests(["justapath"])
    with pytest.raises(ValueError, match="names 'a' twice"):
        lora_requests(["a=/x", "a=/y"])


def test_a_request_selects_its_adapter_by_model_name(tiny_model, tmp_path):
    from runner.engine import LLM, SamplingParams
    from runner.engine.lora.request import LoRARequest

    adapter = write_adapter(tmp_path / "sql", tiny_model, ("q_proj", "v_proj", "up_proj"), 8,
                            16, seed=7)
    llm = LLM(tiny_model, enable_lora=True, **ENGINE_KWARGS)
    prompt = "Paris is the capital of"
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    want = llm.generate(prompt, params, use_tqdm=False,
                        lora_request=LoRARequest("sql", 1, adapter))[0].outputs[0].token_ids
    base = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    assert want != base
    with running_server(llm, [MODEL_NAME], lora_modules=[f"sql={adapter}"]) as (url, _):
        models = httpx.get(f"{url}/v1/models").json()["data"]
        sql = next(m for m in models if m["id"] == "sql")
        assert sql["parent"] == MODEL_NAME and sql["root"] == adapter

        def complete(model):
            return httpx.post(f"{url}/v1/completions", json={
                "model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}, timeout=60)

        r = complete("sql")
        assert r.status_code == 200, r.text
        tok = llm.get_tokenizer()
        assert r.json()["choices"][0]["text"] == tok.decode(want, skip_special_tokens=True)
        assert complete(MODEL_NAME).json()["choices"][0]["text"] == tok.decode(base, skip_special_tokens=True)
        assert complete("nope").status_code == 404
