"""The modes of a run: eval | generate | bench | embed, one small module each.

Each module has `prepare(cfg, sweep_job) -> Plan`, `check_backend(plan, backend)` and
`execute(plan, Session) -> Outcome` (runner/run/plan.py); the lifecycle (runner/run/lifecycle.py)
calls them in that order around the one run folder. No mode imports another; eval and generate
share the request loop (runner/run/loop.py).
"""
from __future__ import annotations

import importlib
from types import ModuleType

MODES = {
    "eval": "runner.run.modes.eval",
    "generate": "runner.run.modes.generate",
    "bench": "runner.run.modes.bench",
    "embed": "runner.run.modes.embed",
}


def get_mode(name: str) -> ModuleType:
    try:
        return importlib.import_module(MODES[name])
    except KeyError:
        raise ValueError(f"mode={name!r}; allowed: {' | '.join(MODES)}") from None
