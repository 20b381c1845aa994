"""The vLLM drop-in conformance harness (issue 19): every script in tests/engine/vllm_examples/
is a vLLM-style example with `from runner.engine import ...` in place of `from vllm import ...`.

Each script is run in its own Python process, with the working directory a fresh tmp folder and
EXAMPLE_MODEL set to the folder of the fixture its `# model: <fixture>` header names (a session
fixture of tests/conftest.py). It passes when it exits 0 and every `# expect: <substring>`
header line appears in its stdout. A script without a `# model:` header is an error, not a skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent / "vllm_examples"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300        # per script; below pytest-timeout's 600 s so the output is shown


def read_headers(script: Path) -> dict[str, list[str]]:
    """`# key: value` lines of the script's leading comment block -> {key: [values]}."""
    headers: dict[str, list[str]] = {}
    for line in script.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        key, sep, value = stripped.lstrip("#").strip().partition(":")
        if sep and key.strip() in ("model", "expect"):
            headers.setdefault(key.strip(), []).append(value.strip())
    return headers


SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_headers_are_read():
    """The header reader itself, on a hand-written script text."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.py"
        p.write_text("# SPDX: none\n# model: tiny_llama\n# expect: a: b\n\n# expect: late\n"
                     "import os\n# expect: ignored\n")
        assert read_headers(p) == {"model": ["tiny_llama"], "expect": ["a: b", "late"]}


def test_there_are_examples():
    assert len(SCRIPTS) >= 6, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_vllm_example_runs(script: Path, request, tmp_path):
    headers = read_headers(script)
    models = headers.get("model", [])
    assert len(models) == 1, f"{script.name}: needs exactly one '# model: <fixture>' header line"
    model_dir = request.getfixturevalue(models[0])
    env = dict(os.environ)
    env["EXAMPLE_MODEL"] = os.fspath(model_dir)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.fspath(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run([sys.executable, os.fspath(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-4000:]
        err = (exc.stderr or b"")[-6000:]
        pytest.fail(f"{script.name} ran past {TIMEOUT_S} s\n--- stdout ---\n{out!r}\n"
                    f"--- stderr ---\n{err!r}")
    tail = f"\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}{tail}"
    for want in headers.get("expect", []):
        assert want in proc.stdout, f"{script.name}: {want!r} not in stdout{tail}"
