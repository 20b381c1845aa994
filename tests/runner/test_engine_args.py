"""Engine arguments are declared once: the Hydra schema mirrors runner.engine's EngineArgs, and
every value of the engine and model groups reaches the EngineArgs that each mode builds.

The second test runs the real lifecycle of each mode (runner.run.run) with every engine field
set to a value that is not its default, and stops it where the local backend would load the
model, reading the EngineArgs it was handed."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from runner import cli
from runner.schemas import (BACKEND_KEYS, MODEL_ENGINE_FIELDS, EngineConfig, ModelConfig,
                            RunConfig)


def _engine_args_fields() -> dict:
    from runner.engine import EngineArgs

    return {f.name: f for f in dataclasses.fields(EngineArgs)}


def test_engine_schema_mirrors_engine_args():
    engine_args = _engine_args_fields()
    engine_cfg = {f.name: f for f in dataclasses.fields(EngineConfig)}
    model_cfg = {f.name: f for f in dataclasses.fields(ModelConfig)}
    mirrored = set(engine_cfg) - set(BACKEND_KEYS)
    declared = mirrored | set(MODEL_ENGINE_FIELDS) | {"seed"}
    missing = sorted(set(engine_args) - declared)
    extra = sorted(declared - set(engine_args))
    assert not missing, f"EngineArgs fields with no config key (add them to EngineConfig and " \
                        f"conf/engine/default.yaml): {missing}"
    assert not extra, f"config keys EngineArgs does not have: {extra}"
    assert not mirrored & set(MODEL_ENGINE_FIELDS), "one declaration per option"
    for name in mirrored:
        assert engine_cfg[name].default == engine_args[name].default, name
    for name in set(MODEL_ENGINE_FIELDS) - {"model"}:
        assert model_cfg[name].default == engine_args[name].default, name
    assert RunConfig().seed == engine_args["seed"].default


def _other_value(field: dataclasses.Field):
    """A value of the field's type that is not its default."""
    hint = typing.get_type_hints(EngineConfig)[field.name]
    if typing.get_origin(hint) is dict:
        return {"x_key": 1}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    default = field.default
    if base is bool:
        return not default if default is not None else True
    if base is int:
        return (default or 0) + 3
    if base is float:
        return (default or 0.0) + 0.25
    if base is str:
        return f"{default}_x" if default else "/tmp/x"
    if base is typing.Any:      # compilation_config: an int or a dict
        return 3
    raise AssertionError(f"no test value for {field.name}: {hint}")


def _override(key: str, value) -> str:
    """A command-line override; a free-form mapping's keys are added with `+` (as tags')."""
    if isinstance(value, dict):
        (k, v), = value.items()
        return f"+{key}.{k}={v}"
    return f"{key}={value}"


class _Stop(Exception):
    pass


MODE_ARGS = {"eval": [], "generate": [], "bench": [],
             "embed": ["dataset=builtin:sts_mini"]}


@pytest.mark.parametrize("mode", list(MODE_ARGS))
def test_every_engine_value_reaches_the_engine_args_of_every_mode(mode, monkeypatch, tmp_path):
    from runner.backends import local
    from runner.run import run

    # (enable_sleep_mode has one value a run takes, false: true is refused, test_validation.py)
    values = {f.name: _other_value(f) for f in dataclasses.fields(EngineConfig)
              if f.name not in BACKEND_KEYS and f.name != "enable_sleep_mode"}
    overrides = [_override(f"engine.{k}", v) for k, v in values.items()]
    model = {"tokenizer": "/tmp/tok", "tokenizer_mode": "slow", "trust_remote_code": True,
             "dtype": "bfloat16", "quantization": "awq", "revision": "r1",
             "tokenizer_revision": "r2", "max_model_len": 123}
    overrides += [f"model.{k}={v}" for k, v in model.items()]
    cfg = cli.to_run_config(cli.compose([f"mode={mode}", *MODE_ARGS[mode], "seed=11",
                                         f"output_root={tmp_path}", *overrides]))
    seen = {}

    def capture(self, args, *rest, **kwargs):
        seen["args"] = args
        raise _Stop

    from runner.backends import ray as ray_backend

    monkeypatch.setattr(local.LocalBackend, "__init__", capture)
    # engine.data_parallel_size=4 (not the default) sends the run to the Ray backend
    monkeypatch.setattr(ray_backend.RayBackend, "__init__", capture)
    with pytest.raises(_Stop):
        run(cfg)
    args = seen["args"]
    for name, value in {**values, **model, "seed": 11}.items():
        assert getattr(args, name) == value, (mode, name)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written yet


def test_cpu_threads_default(monkeypatch):
    from runner.backends import engine_args as ea

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cores, want in ((1, 1), (2, 1), (4, 2), (16, 8), (128, 8)):
        monkeypatch.setattr(ea, "usable_cpus", lambda c=cores: c)
        assert ea.cpu_threads(None) == want
    assert ea.cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert ea.cpu_threads(None) == 5
    assert ea.runs_on_cpu("cpu") and not ea.runs_on_cpu("cuda")


def test_a_model_shape_without_tokenizer_skips_tokenizer_init():
    from runner.backends.engine_args import engine_args
    from runner.model_source import resolve_model_source

    cfg = cli.to_run_config(cli.compose(["model=llama3_8b", "engine.load_format=dummy"]))
    source = resolve_model_source(cfg.model, cfg.engine.load_format)
    assert source.kind == "shape"
    args = engine_args(cfg.model, cfg.engine, cfg.seed, source)
    assert args.skip_tokenizer_init and args.load_format == "dummy"


def test_the_default_run_prefills_in_steps_on_the_cpu():
    """Issue 27.10: the default run's 80 prompts prefilled in one step of minutes, with the
    progress bar at 0/80; on the CPU an unset token budget is CPU_MAX_NUM_BATCHED_TOKENS."""
    from runner.backends.engine_args import CPU_MAX_NUM_BATCHED_TOKENS, engine_args
    from runner.model_source import resolve_model_source
    from runner.tasks import build_task

    cfg = cli.to_run_config(cli.compose(["engine.device=cpu"]))
    args = engine_args(cfg.model, cfg.engine, cfg.seed,
                       resolve_model_source(cfg.model, cfg.engine.load_format))
    assert args.max_num_batched_tokens == CPU_MAX_NUM_BATCHED_TOKENS
    task = build_task(cfg)
    words = sum(len(d.doc["context"].split()) + len(d.doc["question"].split())
                for d in task.docs())
    assert words > CPU_MAX_NUM_BATCHED_TOKENS  # a word is a token or more: several steps
    explicit = cli.to_run_config(cli.compose(["engine.device=cpu",
                                              "engine.max_num_batched_tokens=8192"]))
    assert engine_args(explicit.model, explicit.engine, 0,
                       resolve_model_source(explicit.model)).max_num_batched_tokens == 8192
    gpu = cli.to_run_config(cli.compose(["engine.device=cuda"]))
    assert engine_args(gpu.model, gpu.engine, 0,
                       resolve_model_source(gpu.model)).max_num_batched_tokens is None


def test_engine_profiler_config_traces_the_whole_run(tiny_llama, tmp_path):
    """engine.profiler_config: the local backend profiles from load to close (one torch trace
    in torch_profiler_dir), and the trace is written even when the run ends early."""
    from runner.backends.local import LocalBackend
    from runner.engine import EngineArgs, SamplingParams
    from runner.tasks.api import Request

    trace_dir = tmp_path / "traces"
    args = EngineArgs(model=tiny_llama, device="cpu", max_model_len=64,
                      profiler_config={"profiler": "torch", "torch_profiler_dir": str(trace_dir)})
    backend = LocalBackend(args)
    backend.submit("r0", Request([5, 6, 7], SamplingParams(temperature=0, max_tokens=3)))
    while backend.num_in_flight:
        backend.results()
    assert not trace_dir.exists() or not list(trace_dir.iterdir())   # written at the end
    backend.close()
    traces = [p.name for p in trace_dir.iterdir()]
    assert len(traces) == 1 and traces[0].endswith(".pt.trace.json.gz"), traces
    plain = LocalBackend(EngineArgs(model=tiny_llama, device="cpu", max_model_len=64))
    assert not plain._profiling
    plain.close()


def test_the_local_backend_hands_out_finished_requests_only(tiny_llama):
    """results() carries the requests that finished since the last call, each once, with the
    tokens LLM.generate gives for the same prompts; no RequestOutput for a running request."""
    from runner.backends.local import LocalBackend
    from runner.engine import EngineArgs, SamplingParams
    from runner.tasks.api import Request

    args = EngineArgs(model=tiny_llama, device="cpu", max_model_len=64, dtype="float32")
    backend = LocalBackend(args)
    try:
        prompts = {"short": [5, 6, 7], "long": [8, 9, 10, 11]}
        lengths = {"short": 2, "long": 9}
        for rid, ids in prompts.items():
            backend.submit(rid, Request(ids, SamplingParams(temperature=0, ignore_eos=True,
                                                            max_tokens=lengths[rid])))
        got, calls = {}, 0
        while backend.num_in_flight:
            calls += 1
            for out in backend.results():
                assert out.finished and out.request_id not in got
                got[out.request_id] = out.outputs[0].token_ids
        assert calls > lengths["long"] - 1 and set(got) == set(prompts)
        want = backend.llm.generate([{"prompt_token_ids": p} for p in prompts.values()],
                                    [SamplingParams(temperature=0, ignore_eos=True,
                                                    max_tokens=lengths[r]) for r in prompts],
                                    use_tqdm=False)
        assert [list(got[r]) for r in prompts] == [list(w.outputs[0].token_ids) for w in want]
    finally:
        backend.close()
