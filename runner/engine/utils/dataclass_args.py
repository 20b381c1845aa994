"""One rule for the engine arguments that take a config dataclass or its dict form (vLLM's
profiler_config, pooler_config, ...): None stays None, an instance passes, a dict's keys must
be the dataclass's fields."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


def dataclass_from_arg(cls: type, value: Any, name: str) -> Optional[Any]:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{name} got unknown keys {sorted(unknown)}; known: "
                             f"{sorted(known)}.")
        return cls(**value)
    raise ValueError(f"{name} must be a dict or a {cls.__name__}, got {type(value).__name__}.")
