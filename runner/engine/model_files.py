"""Model files: where a model's folder is and what its files say.

`resolve_model_path` turns what the user gave (a local folder, a hub id, a .gguf file) into a
local folder and its weight files; `load_hf_config` reads config.json (with `hf_overrides`
applied, as vLLM does); `read_generation_config` reads generation_config.json from the folder
that `generation_config` names; `resolve_dtype` and `resolve_max_model_len` derive the two
values config.json decides. runner/engine/config.py calls these while it builds the engine's
configs; nothing here keeps state.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional

import torch

logger = logging.getLogger("runner.engine")

_STR_TO_DTYPE = {
    "half": torch.float16, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float": torch.float32, "float32": torch.float32, "fp32": torch.float32,
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def resolve_model_path(model: str, revision: Optional[str], load_format: str,
                       download_dir: Optional[str] = None) -> tuple[str, list, str]:
    """Local folder, GGUF file or hub id -> (local folder, source weight files, load_format)."""
    if os.path.isfile(model) and model.endswith(".gguf"):
        from runner.engine.gguf_loader import gguf_to_hf_dir
        folder = gguf_to_hf_dir(model)
        fmt = "safetensors" if load_format in ("auto", "gguf") else load_format
        return folder, [os.path.abspath(model)], fmt
    if load_format == "gguf":
        raise ValueError(f"load_format='gguf' needs model to be a .gguf file, got {model!r}.")
    if os.path.isdir(model):
        folder = os.path.abspath(model)
    else:
        looks_local = model.startswith(("/", "./", "../", "~")) or os.sep + os.sep in model \
            or not _REPO_ID.match(model)
        if looks_local:
            raise ValueError(f"model folder not found: {model!r} (no such directory; give a "
                             "local folder with config.json, a .gguf file or a hub id).")
        folder = _snapshot_download(model, revision, load_format, download_dir)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"model folder {folder!r} has no config.json; it is not a HF-format "
                         "model folder.")
    return folder, weight_files_in(folder, load_format), load_format


def _snapshot_download(repo_id: str, revision: Optional[str], load_format: str,
                       download_dir: Optional[str]) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    patterns = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
    if load_format in ("auto", "safetensors"):
        patterns.append("*.safetensors")
    if load_format in ("auto", "pt"):
        patterns.append("*.bin")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                 cache_dir=download_dir)
    except (HfHubHTTPError, OSError, ValueError) as exc:   # includes LocalEntryNotFoundError
        where = "the local hub cache (HF_HUB_OFFLINE=1)" if offline else "the hub or local cache"
        raise ValueError(
            f"model {repo_id!r} (revision {revision or 'main'}) is not a local folder and could "
            f"not be loaded from {where}: {type(exc).__name__}: {exc}") from None


def weight_files_in(folder: str, load_format: str) -> list:
    files = sorted(os.listdir(folder))
    st = [os.path.join(folder, f) for f in files if f.endswith(".safetensors")]
    pt = [os.path.join(folder, f) for f in files
          if f.endswith(".bin") and not f.startswith("training_args")]
    if load_format == "dummy":
        return []
    if load_format in ("auto", "safetensors") and st:
        return st
    if load_format in ("auto", "pt") and pt:
        return pt
    wanted = {"auto": "*.safetensors or *.bin", "safetensors": "*.safetensors",
              "pt": "*.bin"}[load_format]
    raise ValueError(f"no weight files ({wanted}) in model folder {folder!r} for "
                     f"load_format={load_format!r}; use load_format='dummy' for random weights.")


def total_cpu_memory() -> int:
    """The machine's physical memory in bytes (0 when it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    import json
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path!r}: {exc}") from None
    return data if isinstance(data, dict) else {}


def load_hf_config(folder: str, trust_remote_code: bool, hf_overrides: Any = None):
    """config.json as a transformers config, with vLLM's `hf_overrides` applied: a dict of
    attributes (a dict value updates a nested sub-config such as text_config) or a callable
    that takes the config and returns the one to use."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ValueError(f"cannot read config.json in {folder!r}: {exc}") from None
    if hf_overrides is None:
        return config
    if callable(hf_overrides):
        return hf_overrides(config)
    if not isinstance(hf_overrides, dict):
        raise ValueError(f"hf_overrides must be a dict of config attributes or a callable, got "
                         f"{type(hf_overrides).__name__}.")
    _update_config(config, hf_overrides)
    return config


def _update_config(config, overrides: dict) -> None:
    for key, value in overrides.items():
        current = getattr(config, key, None)
        if isinstance(value, dict) and hasattr(current, "to_dict") and not isinstance(
                current, dict):
            _update_config(current, value)      # a sub-config: text_config={...}
        else:
            setattr(config, key, value)


GENERATION_CONFIG_SOURCES = ("auto", "vllm")


def generation_config_folder(model_path: str, generation_config: str) -> str:
    """The folder whose generation_config.json holds the model's generation defaults and EOS
    ids: the model's own for "auto" and "vllm" (vLLM reads EOS ids from it either way), else
    the folder given."""
    if generation_config in GENERATION_CONFIG_SOURCES:
        return model_path
    if not isinstance(generation_config, str) or not os.path.isdir(generation_config):
        raise ValueError(f"generation_config must be 'auto', 'vllm' or a folder with a "
                         f"generation_config.json, got {generation_config!r} (no such folder).")
    return os.path.abspath(generation_config)


def read_generation_config(folder: str) -> dict:
    """generation_config.json's values that differ from transformers' GenerationConfig
    defaults (vLLM's reading: a value equal to HF's default is no default of the model);
    {} when the folder has none."""
    if not os.path.isfile(os.path.join(folder, "generation_config.json")):
        return {}
    from transformers import GenerationConfig
    try:
        config = GenerationConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read generation_config.json in {folder!r}: {exc}") from None
    return config.to_diff_dict()


def _config_dtype(hf_config) -> Optional[torch.dtype]:
    dt = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(dt, str):
        dt = _STR_TO_DTYPE.get(dt.lower())
    return dt if isinstance(dt, torch.dtype) else None


def resolve_dtype(dtype, hf_config, device: torch.device) -> torch.dtype:
    """vLLM's rule: 'auto' keeps the checkpoint's dtype, but float32 becomes float16 on GPU.

    On CPU 'auto' is float32 (half-precision matmuls are slow there and tests compare with
    float32 HF references); an explicit dtype is always honoured.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower()
    if key != "auto":
        return _STR_TO_DTYPE[key]
    if device.type == "cpu":
        return torch.float32
    cfg = _config_dtype(hf_config) or torch.float32
    return torch.float16 if cfg == torch.float32 else cfg


def resolve_max_model_len(hf_config, max_model_len: Optional[int]) -> int:
    derived = None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        val = getattr(hf_config, key, None)
        if isinstance(val, int) and val > 0:
            derived = val
            break
    if derived is None:
        derived = 2048
        logger.warning("config has no max_position_embeddings; assuming %d", derived)
    if max_model_len is None:
        return derived
    if max_model_len < 1:
        raise ValueError(f"max_model_len must be >= 1, got {max_model_len}.")
    if max_model_len > derived:
        raise ValueError(f"max_model_len={max_model_len} is larger than the model's maximum "
                         f"length ({derived}, from its config); lower max_model_len.")
    return max_model_len
