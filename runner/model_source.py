"""Where a run's weights come from: a model config in, the `model` argument of the engine out.

Data flow: ModelConfig (+ the engine's load_format) -> `resolve_model_source` picks the weights:
a GGUF file shipped inside a Python package (found with importlib.util.find_spec without
importing that package; preferred when present, so the default run needs no network), a local
folder or file, a known model shape with random weights (load_format=dummy and a name from
runner.engine_bench.MODEL_SHAPES: a folder with only config.json, no download), or a hub id.
runner/backends/engine_args.py turns the ModelSource into EngineArgs.model.

`weight_hashes` pins the weights a run used for the manifest: GGUF sources take the sha256s the
converter already wrote into gguf_meta.json, hub-cache files take the sha256 that names their
blob, anything else is hashed once.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from runner.schemas import ModelConfig

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 8 * 2**20


class ModelSourceError(ValueError):
    """A model config that names weights the runner cannot find."""


@dataclass
class ModelSource:
    """Where the weights come from: `model` is what LLM(model=...) receives."""

    model: str
    kind: str  # "gguf" | "local" | "hub" | "shape" (config.json only, random weights)
    gguf_path: Optional[str] = None

    @property
    def has_tokenizer(self) -> bool:
        return self.kind != "shape"


def find_package_file(package: str, file: str) -> Optional[Path]:
    """`file` inside the installed `package`, located without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
        roots.append(os.path.dirname(spec.origin))
    for root in roots:
        candidate = Path(root) / file
        if candidate.is_file():
            return candidate
    return None


def resolve_gguf(model_cfg: ModelConfig) -> Optional[Path]:
    """The GGUF file the config names, or None when it names none or it is not installed."""
    g = model_cfg.gguf
    if g is None:
        return None
    if g.path:
        path = Path(g.path).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model.gguf.path: GGUF file not found: {path}")
        return path
    if g.package and g.file:
        return find_package_file(g.package, g.file)
    return None


def resolve_model_source(model_cfg: ModelConfig, load_format: str = "auto") -> ModelSource:
    """The weights `model_cfg` names; ModelSourceError when a local path does not exist."""
    if load_format == "dummy" and not Path(model_cfg.model).expanduser().exists():
        from runner.engine_bench import MODEL_SHAPES, model_folder

        if model_cfg.name in MODEL_SHAPES:
            return ModelSource(model=model_folder(model_cfg.name), kind="shape")
    gguf = resolve_gguf(model_cfg)
    if gguf is not None:
        return ModelSource(model=os.fspath(gguf.absolute()), kind="gguf", gguf_path=os.fspath(gguf))
    name = model_cfg.model
    looks_local = name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf")
    path = Path(name).expanduser()
    if path.exists():
        kind = "gguf" if path.is_file() and name.endswith(".gguf") else "local"
        return ModelSource(model=os.fspath(path.absolute()), kind=kind,
                           gguf_path=os.fspath(path) if kind == "gguf" else None)
    if looks_local:
        raise ModelSourceError(f"model.model: no such file or folder: {name}")
    return ModelSource(model=name, kind="hub")


# ---------------------------------------------------------------------------------------------
# Weight hashes for the manifest


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _hub_blob_sha(path: Path) -> Optional[str]:
    # The HF hub cache stores LFS files as blobs/<sha256> behind snapshot symlinks, so the
    # hash is already known; re-reading tens of GB per run would dominate a short eval.
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and _HEX64.match(target.name):
        return target.name
    return None


def weight_hashes(weight_files: list[str], resolved_dir: Optional[str]) -> list[dict]:
    """[{file, size, sha256, how}] for each source weight file of the loaded model."""
    gguf_meta: dict = {}
    if resolved_dir:
        meta_path = Path(resolved_dir) / "gguf_meta.json"
        if meta_path.is_file():
            try:
                gguf_meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                gguf_meta = {}
    source = gguf_meta.get("source") or {}
    out = []
    for f in weight_files or []:
        p = Path(f)
        entry: dict[str, Any] = {"file": os.fspath(p), "size": p.stat().st_size if p.exists() else None}
        if source.get("sha256") and os.path.abspath(source.get("path", "")) == os.path.abspath(p):
            entry.update(sha256=source["sha256"], how="gguf_meta.json")
        elif (blob := _hub_blob_sha(p)) is not None:
            entry.update(sha256=blob, how="hub blob name")
        elif p.is_file():
            entry.update(sha256=sha256_file(p), how="hashed")
        else:
            entry.update(sha256=None, how="missing")
        out.append(entry)
    return out


def adapter_hashes(folder: str) -> list[dict]:
    """[{file, size, sha256, how, lora}] for the files of a LoRA adapter folder (its config and
    weights), as weight_hashes gives them for the base model."""
    out = []
    for name in sorted(os.listdir(folder)):
        p = Path(folder) / name
        if p.is_file() and (name.endswith((".json", ".safetensors", ".bin"))):
            out.append({"file": os.fspath(p), "size": p.stat().st_size,
                        "sha256": sha256_file(p), "how": "hashed", "lora": True})
    return out
