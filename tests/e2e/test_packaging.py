"""conf/ ships inside the package: the wheel carries every config as runner/conf/..., and the
installed runner, with no checkout and no PYTHONPATH, runs from an empty folder (issue 17.7:
the wheel had no conf/, so `python -m runner` worked only from a checkout)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO_ROOT, write_jsonl


def _source_copy(dest: Path) -> Path:
    """The repository's files (tracked, or new and not ignored) copied to `dest`."""
    files = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(("tests/", "docs/", "scripts/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(out)], check=True, timeout=600,
                   capture_output=True)
    (whl,) = out.glob("runner-*.whl")
    return whl


def test_the_wheel_carries_the_config_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO_ROOT / "conf"
    expected = {"runner/conf/" + p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    assert "runner/cli.py" in names and "runner/data/squad_mini.jsonl" in names


@pytest.mark.slow
def test_the_installed_runner_runs_from_any_folder(wheel, tiny_llama, tmp_path):
    venv = tmp_path / "venv"
    # the heavy dependencies (torch, transformers, hydra) come from this interpreter's site
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(wheel)], check=True, timeout=600, capture_output=True)
    empty = tmp_path / "anywhere"
    empty.mkdir()
    data = write_jsonl(tmp_path / "d.jsonl", 2)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    where = subprocess.run([str(py), "-c", "import runner.cli as c; print(c.CONF_DIR)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    proc = subprocess.run([str(py), "-m", "runner", "model=local", f"model.model={tiny_llama}",
                           f"dataset=jsonl:{data}", "dataset.reference_field=answer",
                           "use_tqdm=false", "sampling.max_tokens=4"], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert list(empty.glob("outputs/default/*/metrics.json"))
