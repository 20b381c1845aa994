"""EngineArgs at vLLM's path (vllm.engine.arg_utils), and its command line.

    from runner.engine.engine.arg_utils import EngineArgs
    from runner.engine.utils.argparse_utils import FlexibleArgumentParser
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    engine_args = EngineArgs.from_cli_args(parser.parse_args())

EngineArgs is declared once, in runner/engine/config.py; `add_engine_cli_args` derives one option
per dataclass field from its name and type, as vLLM's add_cli_args does: `--max-model-len` for
max_model_len (underscores also parse: FlexibleArgumentParser), `--enforce-eager` /
`--no-enforce-eager` for a bool, `None` for an optional value, JSON for a dict
(`--hf-overrides '{"num_hidden_layers": 1}'`), an int or JSON for `--compilation-config`, the
choices of the fields that have a fixed set, and vLLM's short forms -tp, -pp, -dp and -q. Every
default is the dataclass's, so `LLM(**vars(parser.parse_args()))` equals `LLM(model=...)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from typing import Any, Callable

from runner.engine.config import (CONVERT_OPTIONS, KV_CACHE_DTYPES, RUNNER_OPTIONS,
                                  EngineArgs)

__all__ = ["EngineArgs", "add_engine_cli_args"]

SHORT_FORMS = {"tensor_parallel_size": "-tp", "pipeline_parallel_size": "-pp",
               "data_parallel_size": "-dp", "quantization": "-q"}
CHOICES = {
    "tokenizer_mode": ["auto", "hf", "slow"],
    "dtype": ["auto", "half", "float16", "bfloat16", "float", "float32"],
    "load_format": ["auto", "safetensors", "pt", "dummy", "gguf"],
    "device": ["auto", "cpu", "cuda"],
    "kv_cache_dtype": list(KV_CACHE_DTYPES),
    "kernel_backend": ["auto", "triton", "torch"],
    "runner": list(RUNNER_OPTIONS),
    "convert": list(CONVERT_OPTIONS),
    "preemption_mode": ["swap", "recompute"],
}
# vLLM's human-readable token counts: 1k = 1000, 1K = 1024, 1m / 1M likewise
_HUMAN = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}


def human_readable_int(value: str) -> int:
    match = _HUMAN.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected an int such as 4096, 4k or 4K, got {value!r}")
    number = float(match.group(1)) * _UNITS[match.group(2)]
    if number != int(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of tokens")
    return int(number)


def _json_dict(value: str) -> dict:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return parsed


def _compilation(value: str) -> Any:
    value = value.strip()
    return int(value) if value.lstrip("-").isdigit() else _json_dict(value)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(value: str) -> Any:
        return None if value == "None" else parse(value)
    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _kwargs(name: str, hint: Any, default: Any) -> dict:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if len(args) == 1 else (hint if not args else Any)
    kwargs: dict = {"default": default, "help": f"EngineArgs.{name} (default: {default!r})"}
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    if name == "compilation_config":
        parse = _compilation
    elif name in ("max_model_len", "max_num_batched_tokens"):
        parse = human_readable_int
    elif base is int:
        parse = int
    elif base is float:
        parse = float
    elif base is dict or name in ("hf_overrides", "override_generation_config",
                                  "profiler_config", "pooler_config"):
        parse = _json_dict
    else:
        parse = str
    if name in CHOICES:
        kwargs["choices"] = CHOICES[name] + ([None] if optional else [])   # "None" parses to None
        if optional:
            kwargs["type"] = _optional(str)
        return kwargs
    kwargs["type"] = _optional(parse) if optional else parse
    return kwargs


def add_engine_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One option per EngineArgs field (module docstring); returns the parser, as vLLM's."""
    hints = typing.get_type_hints(EngineArgs)
    group = parser.add_argument_group("EngineArgs", "runner.engine's engine arguments")
    for field in dataclasses.fields(EngineArgs):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None      # model: EngineArgs refuses None when it builds the configs
        flags = [f"--{field.name.replace('_', '-')}"]
        if field.name in SHORT_FORMS:
            flags.append(SHORT_FORMS[field.name])
        group.add_argument(*flags, dest=field.name,
                           **_kwargs(field.name, hints[field.name], default))
    return parser
