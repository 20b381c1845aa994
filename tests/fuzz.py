"""The sizes of the hypothesis property tests (tests/**/test_fuzz_*.py): one short run in the
default suite and one nightly-size run behind the `slow` marker, from the same property.

    @SIZES                                   parametrizes a test over "fast" and "nightly"
    def test_x(size):                        (nightly carries pytest.mark.slow)
        fuzz(size, strategy, prop)           prop(value) checked on `examples(size)` values

The fast run draws FAST_EXAMPLES values per property (about a second or two each on one CPU
core); the nightly run FUZZ_NIGHTLY_EXAMPLES (environment, default 2000) with no deadline:
`pytest -m slow tests -k fuzz`. Per-example deadlines catch a value that makes a reader
slow; pytest-timeout (the `timeout` marker on each test) catches a hang. No example database
is written: a failure prints the value and the `@reproduce_failure` blob to replay it.
"""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, note, settings

FAST_EXAMPLES = 60
NIGHTLY_EXAMPLES = int(os.environ.get("FUZZ_NIGHTLY_EXAMPLES", "2000"))

SIZES = pytest.mark.parametrize(
    "size", ["fast", pytest.param("nightly", marks=pytest.mark.slow)])


def examples(size: str, fast: int = FAST_EXAMPLES) -> int:
    return fast if size == "fast" else max(NIGHTLY_EXAMPLES, fast)


def fuzz(size: str, strategy, prop, *, fast: int = FAST_EXAMPLES,
         deadline_ms: int | None = 2000) -> None:
    """Check prop(value) for values drawn from `strategy`, as many as `size` asks for."""
    def checked(value):
        note(f"drawn value: {value!r:.3000}")  # printed with a failing example
        prop(value)

    run = settings(
        max_examples=examples(size, fast),
        deadline=None if size == "nightly" or deadline_ms is None
        else timedelta(milliseconds=deadline_ms),
        database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(strategy)(checked))
    run()
