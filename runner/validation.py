"""Rules that span config fields, checked before any output folder exists or any engine starts.

The structured-config dataclasses (runner/schemas.py) catch unknown keys and wrong types at
compose time; what they cannot say is "in beam-search mode temperature must be 0". Those rules
are the JSON Schema `SAMPLING_SCHEMA` below, one `if`/`then` branch per sampling mode (beam,
non-beam, greedy), with the same rules as runner.engine.SamplingParams (tests/runner/
test_validation.py checks that both agree on a table of configs).

Data flow: a SamplingConfig (or dict) -> `sampling_instance` (best_of defaults to n, as in
SamplingParams) -> jsonschema Draft 2020-12 -> the first error becomes a ConfigError whose one
line names the field, the value, the mode and the allowed values:

    sampling.temperature=0.7 is not allowed in beam search mode (use_beam_search=true);
    allowed: 0

`validate_run` adds the checks of the rest of the config that need no model and no data rows:
a run evaluates a task or a dataset (never both; mode=bench and mode=embed take no task), a
jsonl file that does not exist, limit / cpu_threads / run_id / experiment values, the backend
(engine=remote needs engine.url), engine.data_parallel_size and the distributed section (Ray's
address; its reachability and GPU count are checked when the backend connects, still before
the run folder exists). The engine's own arguments (device, dtype, kv_cache_dtype,
tensor_parallel_size, ...) are checked by the engine itself when the backend is built, which the
lifecycle does before the run folder exists.

A null sampling value means "not set": a task's generation_kwargs fill it (runner/tasks/
sampling.py), and everywhere else SamplingParams' own default applies (`sampling_kwargs`
drops the nulls before SamplingParams is built).
"""
from __future__ import annotations

import json
import os
from pathlib import PurePosixPath
from typing import Any, Iterable

import jsonschema

from runner.schemas import BACKENDS, RunConfig, SamplingConfig, to_plain

SAMPLING_EPS = 1e-5  # below this a temperature means greedy (vLLM's threshold)

_NULLABLE_INT = {"type": ["integer", "null"]}

SAMPLING_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "runner/sampling.schema.json",
    "title": "sampling",
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        "best_of": {"type": "integer", "minimum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
        # null: the task's value (runner/tasks/sampling.py); SamplingParams' own otherwise
        "temperature": {"type": ["number", "null"], "minimum": 0},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": _NULLABLE_INT,
        "use_beam_search": {"type": "boolean"},
        "length_penalty": {"type": "number"},
        "early_stopping": {"enum": [True, False, "never"]},
        "stop": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
        "stop_token_ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "ignore_eos": {"type": "boolean"},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "min_tokens": {"type": "integer", "minimum": 0},
        "logprobs": {"type": ["integer", "null"], "minimum": 0},
        "prompt_logprobs": {"type": ["integer", "null"], "minimum": 0},
        "skip_special_tokens": {"type": "boolean"},
    },
    "required": ["n", "best_of", "temperature", "top_p", "top_k", "use_beam_search",
                 "length_penalty", "early_stopping", "max_tokens"],
    "allOf": [
        {
            "if": {"properties": {"use_beam_search": {"const": True}}},
            "then": {
                "title": "beam search mode (use_beam_search=true)",
                "properties": {
                    "best_of": {"minimum": 2, "description": "> 1 (the beam width)"},
                    "temperature": {"type": "number", "maximum": SAMPLING_EPS,
                                    "description": "0"},
                    "top_p": {"const": 1},
                    "top_k": {"enum": [-1, 0], "description": "-1 (or 0: disabled)"},
                    "early_stopping": {"enum": [True, False, "never"]},
                },
            },
            "else": {
                "title": "sampling mode (use_beam_search=false)",
                "properties": {
                    "early_stopping": {"const": False},
                    "length_penalty": {"const": 1},
                },
            },
        },
        {
            "if": {
                "properties": {
                    "use_beam_search": {"const": False},
                    # a null temperature is not greedy: it is the task's (or SamplingParams')
                    "temperature": {"type": "number", "exclusiveMaximum": SAMPLING_EPS},
                },
            },
            "then": {
                "title": "greedy mode (temperature < 1e-05)",
                "properties": {
                    "best_of": {"const": 1},
                    "top_p": {"const": 1},
                    "top_k": {"enum": [-1, 0], "description": "-1 (or 0: disabled)"},
                },
            },
        },
    ],
}

_VALIDATOR = jsonschema.Draft202012Validator(SAMPLING_SCHEMA)


class ConfigError(ValueError):
    """A config that composes but cannot run; the message is one line for the user."""


def sampling_instance(sampling: SamplingConfig | dict) -> dict:
    """The JSON object the schema sees: best_of=None means best_of=n, as in SamplingParams."""
    inst = dict(to_plain(sampling)) if not isinstance(sampling, dict) else dict(sampling)
    if inst.get("best_of") is None:
        inst["best_of"] = inst.get("n")
    return inst


def sampling_mode(sampling: SamplingConfig | dict) -> str:
    inst = sampling_instance(sampling)
    if inst.get("use_beam_search"):
        return "beam"
    temperature = inst.get("temperature")
    if isinstance(temperature, (int, float)) and temperature < SAMPLING_EPS:
        return "greedy"
    return "random"


def _allowed(error: jsonschema.ValidationError) -> str:
    if isinstance(error.schema, dict) and "description" in error.schema:
        return error.schema["description"]
    v, value = error.validator, error.validator_value
    if v == "const":
        return json.dumps(value)
    if v == "enum":
        return " | ".join(json.dumps(x) for x in value)
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}[v]
        return f"{op} {value}"
    if v == "type":
        return f"type {' or '.join(value) if isinstance(value, list) else value}"
    if v == "minLength":
        return "non-empty strings"
    if v == "required":
        return "the field must be present"
    return f"{v} {json.dumps(value)}"


def _mode_title(error: jsonschema.ValidationError) -> str | None:
    # Walk the schema along the failing path; the nearest branch with a title names the mode.
    node: Any = SAMPLING_SCHEMA
    title = None
    for step in list(error.absolute_schema_path)[:-1]:
        node = node[step]
        if isinstance(node, dict) and "title" in node and node is not SAMPLING_SCHEMA:
            title = node["title"]
    return title


def _error_line(error: jsonschema.ValidationError, prefix: str) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        field = error.message.split("'")[1] if "'" in error.message else "?"
        return f"{prefix}.{field} is required"
    value = error.instance
    where = _mode_title(error)
    mode = f" in {where}" if where else ""
    return (f"{prefix}.{path}={json.dumps(value)} is not allowed{mode}; "
            f"allowed: {_allowed(error)}")


def sampling_errors(sampling: SamplingConfig | dict, prefix: str = "sampling") -> list[str]:
    """Every rule the sampling config breaks, one line each (empty when it is valid)."""
    inst = sampling_instance(sampling)
    errors = sorted(_VALIDATOR.iter_errors(inst),
                    key=lambda e: (list(e.absolute_path), list(e.absolute_schema_path)))
    lines = [_error_line(e, prefix) for e in errors]
    # Relations between two fields that JSON Schema does not compare.
    n, best_of = inst.get("n"), inst.get("best_of")
    if isinstance(n, int) and isinstance(best_of, int) and best_of < n:
        lines.append(f"{prefix}.best_of={best_of} is not allowed with n={n}; allowed: >= n")
    max_tokens, min_tokens = inst.get("max_tokens"), inst.get("min_tokens")
    if isinstance(max_tokens, int) and isinstance(min_tokens, int) and min_tokens > max_tokens:
        lines.append(f"{prefix}.min_tokens={min_tokens} is not allowed with "
                     f"max_tokens={max_tokens}; allowed: <= max_tokens")
    return lines


def validate_sampling(sampling: SamplingConfig | dict, prefix: str = "sampling") -> None:
    lines = sampling_errors(sampling, prefix)
    if lines:
        more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:])})" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more)


def _jsonl_path(source: str) -> str | None:
    return source[len("jsonl:"):] if isinstance(source, str) and source.startswith("jsonl:") else None


def check_experiment(value: Any) -> None:
    """An experiment is a relative folder name inside output_root (sub-folders allowed)."""
    text = str(value) if value is not None else ""
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text.strip() or text.startswith(("/", "~")) or ".." in parts or ":" in text:
        raise ConfigError(f"experiment={text!r} is not allowed; allowed: a relative folder name "
                          "inside output_root, without '..' (e.g. experiment=squad/llama)")


def _check_backend(cfg: RunConfig) -> None:
    e = cfg.engine
    if e.backend not in BACKENDS:
        raise ConfigError(f"engine.backend={e.backend!r} is not allowed; allowed: "
                          f"{' | '.join(BACKENDS)}")
    if e.backend == "remote":
        if not e.url:
            raise ConfigError("engine.url is required with engine=remote (engine.backend=remote), "
                              "e.g. engine.url=http://127.0.0.1:8000/v1")
        if not str(e.url).startswith(("http://", "https://")):
            raise ConfigError(f"engine.url={e.url!r} is not allowed; allowed: http://HOST:PORT"
                              "[/v1] or https://...")
        if e.remote_prompt not in ("token_ids", "text"):
            raise ConfigError(f"engine.remote_prompt={e.remote_prompt!r} is not allowed; "
                              "allowed: token_ids | text")
        local = _local_engine_values(e)
        if local:
            raise ConfigError(f"{local[0]} does not apply to engine=remote: the server's own "
                              "engine runs the model (set it there); remove it from the run")
    elif e.url:
        raise ConfigError(f"engine.url={e.url} is set but engine.backend={e.backend} would "
                          "ignore it; use engine=remote (or engine.backend=remote)")
    _check_distributed(cfg)


def _local_engine_values(e) -> list[str]:
    """`engine.X=V` for every local-engine argument set away from its default (what a remote
    backend would have to ignore); data_parallel_size has its own message below."""
    import dataclasses as dc

    from runner.schemas import BACKEND_KEYS, EngineConfig

    out = []
    for f in dc.fields(EngineConfig):
        if f.name in BACKEND_KEYS or f.name == "data_parallel_size":
            continue
        default = f.default if f.default is not dc.MISSING else f.default_factory()
        value = to_plain(getattr(e, f.name))
        if value != default:
            out.append(f"engine.{f.name}={json.dumps(value)}")
    return out


def _check_distributed(cfg: RunConfig) -> None:
    """engine.data_parallel_size and the distributed section; whether Ray, the cluster and its
    GPUs are there is checked when the backend connects (runner/backends/ray_cluster.py)."""
    e, d = cfg.engine, cfg.distributed
    dp = e.data_parallel_size
    if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:
        raise ConfigError(f"engine.data_parallel_size={dp} is not allowed; allowed: an integer "
                          ">= 1 (the number of engine replicas)")
    if e.backend == "remote" and dp > 1:
        raise ConfigError(f"engine.data_parallel_size={dp} does not apply to engine=remote (the "
                          "server runs its own replicas); use engine.max_concurrency, or the "
                          "local engine on Ray (engine.backend=local)")
    address = d.ray_address
    if address is not None and address != "auto" and not (
            str(address).startswith("ray://") or _host_port(str(address))):
        raise ConfigError(f"distributed.ray_address={address!r} is not allowed; allowed: null "
                          "(a local Ray), auto (the cluster this node is in), ray://HOST:PORT "
                          "or HOST:PORT (a cluster's head)")
    if not d.num_cpus_per_replica > 0:
        raise ConfigError(f"distributed.num_cpus_per_replica={d.num_cpus_per_replica} is not "
                          "allowed; allowed: > 0")
    if d.replica_queue_size is not None and d.replica_queue_size < 1:
        raise ConfigError(f"distributed.replica_queue_size={d.replica_queue_size} is not "
                          "allowed; allowed: >= 1 or null (2 x engine.max_num_seqs)")
    for key in ("replica_call_s", "replica_start_timeout_s"):
        if not getattr(d, key) > 0:
            raise ConfigError(f"distributed.{key}={getattr(d, key)} is not allowed; allowed: > 0")


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())


def sampling_kwargs(sampling: SamplingConfig | dict) -> dict:
    """SamplingParams keyword arguments of a sampling config: the null ("not set") values
    left out, so SamplingParams' own defaults apply to them."""
    plain = dict(to_plain(sampling)) if not isinstance(sampling, dict) else dict(sampling)
    return {k: v for k, v in plain.items() if v is not None}


def _check_task_or_dataset(cfg: RunConfig) -> None:
    mode = cfg.mode.value
    if cfg.task is not None:
        if mode in ("bench", "embed"):
            what = "a synthetic workload" if mode == "bench" else "the pairs of dataset="
            raise ConfigError(f"task= does not apply to mode={mode} (it runs {what}); drop "
                              "task= or use mode=eval / mode=generate")
        if cfg.dataset is not None:
            raise ConfigError(f"both task ({cfg.task.task or cfg.task.group}) and dataset "
                              f"({cfg.dataset.name}) are set; a run evaluates one of them")
    elif cfg.dataset is None and mode != "bench":
        raise ConfigError(f"mode={mode} needs a dataset or a task: choose dataset=NAME or "
                          "task=NAME")


def validate_run(cfg: RunConfig) -> None:
    """All checks that need no model and no data rows; raises ConfigError."""
    validate_sampling(cfg.sampling)
    _check_backend(cfg)
    if cfg.engine.enable_sleep_mode:
        raise ConfigError("engine.enable_sleep_mode=true is not allowed: a run never puts the "
                          "engine to sleep (LLM.sleep is for scripts); leave it false")
    check_experiment(cfg.experiment)
    _check_task_or_dataset(cfg)
    path = _jsonl_path(cfg.dataset.source) if cfg.dataset is not None else None
    if path is not None and not path:
        raise ConfigError("dataset.source=jsonl: names no file; use dataset=jsonl:PATH or "
                          "dataset.source=jsonl:PATH")
    if path is not None and not os.path.isfile(os.path.expanduser(path)):
        raise ConfigError(f"dataset.source={cfg.dataset.source}: jsonl file not found: "
                          f"{os.path.abspath(os.path.expanduser(path))}")
    for key in ("limit", "cpu_threads"):
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key}={value} is not allowed; allowed: >= 1 or null")
    if cfg.run_id is not None and (not cfg.run_id or any(c in cfg.run_id for c in "/\\")
                                   or cfg.run_id in (".", "..")):
        raise ConfigError(f"run_id={cfg.run_id!r} is not allowed; allowed: a folder name "
                          "without '/'")


def check_all(items: Iterable[tuple[str, dict]]) -> dict[str, list[str]]:
    """{name: errors} for several sampling dicts (used by tests and the config walker)."""
    return {name: sampling_errors(s) for name, s in items}
