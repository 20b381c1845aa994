"""The runner with a LoRA adapter (model.lora=PATH), a `python -m runner` subprocess on the tiny
random Llama: its predictions are the engine's tokens with that adapter (LLM.generate with a
LoRARequest on the same prompt ids), the manifest records the adapter's path and each file's
sha256, and a folder that is not an adapter stops the run with the loader's message."""
from __future__ import annotations

import hashlib

from tests.e2e.helpers import (only_run_dir, read_json, read_predictions, run_cli, tiny_args,
                               write_jsonl)
from tests.engine.lora_utils import write_adapter


def test_model_lora_runs_the_adapter_and_pins_it_in_the_manifest(tiny_llama, tmp_path):
    from runner.engine import LLM, SamplingParams
    from runner.engine.lora.request import LoRARequest

    adapter = write_adapter(tmp_path / "ad", tiny_llama, ("q_proj", "v_proj", "down_proj"), 8,
                            16, seed=5)
    write_jsonl(tmp_path / "data.jsonl", 3)
    out = tmp_path / "out"
    run_cli(tiny_args(tiny_llama, "data.jsonl", out, f"model.lora={adapter}",
                      "sampling=greedy"), cwd=tmp_path, check=True)
    run_dir = only_run_dir(out)
    preds = read_predictions(run_dir)
    llm = LLM(tiny_llama, enable_lora=True)
    params = SamplingParams(temperature=0, max_tokens=8)
    lora = LoRARequest("ad", 1, adapter)
    prompts = [{"prompt_token_ids": p["prompt_token_ids"]} for p in preds]
    want = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False,
                                                         lora_request=lora)]
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    got = [p["outputs"][0]["token_ids"] for p in preds]
    assert got == want and got != base
    model = read_json(run_dir / "manifest.json")["model"]
    assert model["lora"]["path"] == adapter
    files = {f["file"].rsplit("/", 1)[-1]: f["sha256"] for f in model["lora"]["files"]}
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(f"{adapter}/{name}", "rb") as fh:
            assert files[name] == hashlib.sha256(fh.read()).hexdigest()


def test_a_folder_that_is_not_an_adapter_stops_the_run(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", 2)
    proc = run_cli(tiny_args(tiny_llama, "data.jsonl", tmp_path / "out",
                             f"model.lora={tmp_path}"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "adapter_config.json is missing" in proc.stderr, proc.stderr[-2000:]


def test_a_sweep_over_adapters(tiny_llama, tmp_path):
    """-m model.lora=null,A,B: one job per adapter (and the base), each pinned to its own."""
    adapters = [write_adapter(tmp_path / n, tiny_llama, mods, 8, 16, seed=i)
                for i, (n, mods) in enumerate([("a", ("q_proj",)), ("b", ("up_proj",))])]
    write_jsonl(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out"
    run_cli(["-m", *tiny_args(tiny_llama, "data.jsonl", out, "sampling=greedy",
                              f"model.lora=null,{adapters[0]},{adapters[1]}")],
            cwd=tmp_path, check=True)
    jobs = sorted(p.parent for p in out.glob("*/sweep_*/*/manifest.json"))
    assert len(jobs) == 3
    loras = [read_json(j / "manifest.json")["model"].get("lora") for j in jobs]
    assert [None if x is None else x["path"] for x in loras] == [None, *adapters]
    tokens = [[p["outputs"][0]["token_ids"] for p in read_predictions(j)] for j in jobs]
    assert tokens[0] != tokens[1] and tokens[0] != tokens[2] and tokens[1] != tokens[2]
