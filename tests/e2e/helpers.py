"""Shared helpers of the end-to-end tests: run `python -m runner` in a subprocess, make jsonl
datasets, read a run folder back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def runner_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args, cwd, timeout=600, check=False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd,
                          env=runner_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"runner failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_jsonl(path, n: int, *, prefix: str = "q") -> Path:
    path = Path(path)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i:03d}",
                                "prompt": f"Question {i}: who wrote the book in {1900 + i}?",
                                "answer": "the old sailor"}) + "\n")
    return path


def run_dirs(output_root) -> list[Path]:
    return sorted(p.parent for p in Path(output_root).glob("*/*/manifest.json"))


def only_run_dir(output_root) -> Path:
    dirs = run_dirs(output_root)
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_predictions(run_dir) -> list[dict]:
    with open(Path(run_dir) / "predictions.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def tiny_args(model_dir, dataset, output_root, *extra) -> list[str]:
    return ["model=local", f"model.model={model_dir}", f"dataset=jsonl:{dataset}",
            "dataset.reference_field=answer", f"output_root={output_root}", "use_tqdm=false",
            "sampling.max_tokens=8", *extra]
