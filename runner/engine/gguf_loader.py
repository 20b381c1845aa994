"""GGUF checkpoints -> cached HF-format folders that the engine's model loader reads.

The engine loads HF folders only (config.json, tokenizer files, *.safetensors with HF names),
so a GGUF file is converted once, as vLLM does it: every tensor dequantized, here to float32
(the model loader then casts to the model's dtype).

    gguf_to_hf_dir(path)
      -> stat the file; cache key = hash(absolute path, size, mtime_ns, CONVERTER_VERSION)
      -> cache hit (gguf_meta.json agrees with the stat): return the folder, no hashing
      -> miss: sha256 of the file -> GGUFReader -> metadata -> config.json + generation_config.json
               -> tensors: dequantize -> reverse dims -> llama.cpp names to HF names
                  -> undo the q/k rotary row permutation -> float32 safetensors shard(s)
               -> tokenizer: transformers builds it from the GGUF, we save_pretrained it
               -> gguf_meta.json (source identity, sha256 of the source and of every file)
               -> all of it is built in a temp folder beside the entry and os.replace'd in

Only the llama architecture is converted; anything else is a ValueError naming what it is.
The entry lives under `cache_dir` (default `$RUNNER_CACHE_DIR/gguf`, else `~/.cache/runner/gguf`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the written folder changes meaning: old cache entries then stop matching.
CONVERTER_VERSION = 1
GGUF_META_FILENAME = "gguf_meta.json"
SUPPORTED_ARCHITECTURES = ("llama",)
DEFAULT_MAX_SHARD_BYTES = 4 * 2**30
_GGUF_MAGIC = b"GGUF"
_HASH_CHUNK = 8 * 2**20

# Per-layer GGUF tensor stems -> HF Llama module paths (inside model.layers.N.).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


# ----------------------------------------------------------------------------- public API


def gguf_to_hf_dir(
    gguf_path: str,
    cache_dir: str | None = None,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """Convert a GGUF checkpoint into an HF-format folder once and return the cached folder.

    A later call for the same unchanged file (same absolute path, size and mtime) returns the
    same folder without reading the file. `max_shard_bytes` bounds each safetensors file (and so
    the peak memory of a conversion); a model that fits is one `model.safetensors`.
    """
    src = Path(gguf_path).expanduser().absolute()
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file not found: {src}")
    _check_magic(src)
    st = src.stat()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / f"{_safe_stem(src)}-{_identity_key(src, st)}"
    if _entry_is_valid(entry, src, st):
        return str(entry)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=root))
    try:
        _convert_into(src, st, tmp, max_shard_bytes)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a shared cache must stay readable by others
        return str(_publish(tmp, entry, src, st))
    finally:
        # On success _publish moved tmp away; on any failure this removes the partial build.
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache_dir() -> Path:
    """`$RUNNER_CACHE_DIR/gguf` when set, else `~/.cache/runner/gguf`; read at call time."""
    base = os.environ.get("RUNNER_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "runner") / "gguf"


def is_gguf_file(path: str) -> bool:
    """True for an existing file that starts with the GGUF magic (so `LLM(model=...)` can route)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except (OSError, TypeError):
        return False


def load_gguf_meta(hf_dir: str) -> dict[str, Any] | None:
    """The gguf_meta.json of a converted folder (source sha256, file hashes), or None."""
    p = Path(hf_dir) / GGUF_META_FILENAME
    if not p.is_file():
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- cache entry


def _safe_stem(src: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", src.stem)[:80] or "model"


def _identity_key(src: Path, st: os.stat_result) -> str:
    ident = f"{src}\0{st.st_size}\0{st.st_mtime_ns}\0{CONVERTER_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _entry_is_valid(entry: Path, src: Path, st: os.stat_result) -> bool:
    """Trust path+size+mtime: the stored stat must agree and every recorded file must exist."""
    try:
        meta = load_gguf_meta(str(entry))
    except (OSError, ValueError):
        return False
    if not meta or meta.get("converter_version") != CONVERTER_VERSION:
        return False
    s = meta.get("source", {})
    if (s.get("path"), s.get("size"), s.get("mtime_ns")) != (str(src), st.st_size, st.st_mtime_ns):
        return False
    return all((entry / name).is_file() for name in meta.get("files", {}))


def _publish(tmp: Path, entry: Path, src: Path, st: os.stat_result) -> Path:
    """Move a finished build into place; a concurrent converter that got there first wins."""
    try:
        os.replace(tmp, entry)
        return entry
    except OSError:
        if not entry.exists():
            raise
    if _entry_is_valid(entry, src, st):
        return entry
    # A stale or broken entry under our key: move it aside first so the swap stays atomic.
    trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=entry.parent))
    os.replace(entry, trash / "entry")
    os.replace(tmp, entry)
    shutil.rmtree(trash, ignore_errors=True)
    return entry


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_magic(src: Path) -> None:
    with open(src, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ValueError(f"not a GGUF file (magic {magic!r}, expected {_GGUF_MAGIC!r}): {src}")


# ----------------------------------------------------------------------------- conversion


def _convert_into(src: Path, st: os.stat_result, out: Path, max_shard_bytes: int) -> None:
    import gguf

    try:
        reader = gguf.GGUFReader(str(src), "r")
    except Exception as e:  # the reader raises assorted errors on truncated/corrupt files
        raise ValueError(f"cannot read GGUF file {src}: {type(e).__name__}: {e}") from e
    meta = _Metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} in {src} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if int(meta.get("split.count", 1)) > 1:
        raise ValueError(f"{src} is one part of a split GGUF; merge it first (gguf-split --merge)")
    tensors = {t.name: t for t in reader.tensors}
    config = _llama_config(meta, tensors, src)

    source_sha = _sha256_file(src)
    weight_files = _write_weights(reader, config, out, max_shard_bytes, src)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", _generation_config(config))
    _write_tokenizer(src, meta, out)

    now = src.stat()
    if (now.st_mtime_ns, now.st_size) != (st.st_mtime_ns, st.st_size):
        raise RuntimeError(f"GGUF file changed while it was being converted: {src}")
    files = {p.name: _sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    qtypes: dict[str, int] = {}
    for t in reader.tensors:
        qtypes[t.tensor_type.name] = qtypes.get(t.tensor_type.name, 0) + 1
    _write_json(out / GGUF_META_FILENAME, {
        "converter_version": CONVERTER_VERSION,
        "source": {"path": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "sha256": source_sha},
        "architecture": arch,
        "name": meta.get("general.name"),
        "tensor_types": qtypes,
        "weight_files": weight_files,
        "files": files,
    })


class _Metadata:
    """Scalar GGUF metadata read on demand (token lists are large and never needed here)."""

    def __init__(self, reader):
        self._fields = reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value.item() if isinstance(value, np.generic) else value


def _llama_config(meta: _Metadata, tensors: dict, src: Path) -> dict[str, Any]:
    def need(key: str) -> Any:
        value = meta.get(f"llama.{key}")
        if value is None:
            raise ValueError(f"GGUF metadata key 'llama.{key}' is missing in {src}")
        return value

    if "rope_freqs.weight" in tensors:
        # llama.cpp stores Llama-3.1-style rope scaling as per-frequency factors, not as the
        # (factor, low/high_freq_factor) parameters HF needs; guessing them would be silent drift.
        raise ValueError(
            f"{src} carries a rope_freqs tensor (llama3 rope scaling); converting it is not "
            "supported yet"
        )
    if "token_embd.weight" not in tensors:
        raise ValueError(f"GGUF file {src} has no token_embd.weight tensor")
    hidden = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(meta.get("llama.attention.head_count_kv", n_heads))
    head_dim = int(meta.get("llama.attention.key_length", hidden // n_heads))
    rot_dim = meta.get("llama.rope.dimension_count")
    if rot_dim is not None and int(rot_dim) != head_dim:
        raise ValueError(
            f"{src}: rope.dimension_count {rot_dim} != head_dim {head_dim}; partial rotary "
            "embeddings are not supported for llama"
        )
    # The embedding rows are the model's vocab; the token list may be shorter (padded vocab).
    vocab = int(tensors["token_embd.weight"].shape[-1])  # GGUF dims are (hidden, vocab)
    stated = meta.get("llama.vocab_size")
    if stated is not None and int(stated) != vocab:
        raise ValueError(f"{src}: llama.vocab_size {stated} != token_embd rows {vocab}")

    eos_ids = _eos_ids(meta)
    rope_theta = float(meta.get("llama.rope.freq_base", 10000.0))
    rope_scaling = _rope_scaling(meta, src)
    # Both the legacy keys (transformers 4.x and raw readers) and v5's rope_parameters.
    rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling is not None:
        rope_parameters = {**rope_scaling, "rope_theta": rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(need("context_length")),
        "rms_norm_eps": float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _eos_ids(meta: _Metadata) -> list[int]:
    """eos first, then llama.cpp's end-of-turn/end-of-message ids: chat models stop on those."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is not None and int(v) not in ids:
            ids.append(int(v))
    return ids


def _rope_scaling(meta: _Metadata, src: Path) -> dict[str, Any] | None:
    kind = meta.get("llama.rope.scaling.type")
    factor = meta.get("llama.rope.scaling.factor")
    if kind is None and meta.get("llama.rope.scale_linear") is not None:
        kind, factor = "linear", meta.get("llama.rope.scale_linear")  # pre-2024 key
    if kind in (None, "none"):
        return None
    if kind == "linear":
        if factor in (None, 0.0, 1.0):  # llama.cpp writes factor 1 (or 0) to mean "no scaling"
            return None
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
        orig = meta.get("llama.rope.scaling.original_context_length")
        if orig is not None:
            out["original_max_position_embeddings"] = int(orig)
        for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            v = meta.get(f"llama.rope.scaling.{gguf_key}")
            if v is not None:
                out[hf_key] = float(v)
        return out
    raise ValueError(f"{src}: rope scaling type {kind!r} is not supported (linear, yarn)")


def _generation_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if config[k] is not None}


def _hf_name(gguf_name: str, n_layers: int, src: Path) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES and int(m.group(1)) < n_layers:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    # Dropping an unknown tensor would give a model that loads and is quietly wrong.
    raise ValueError(f"{src}: GGUF tensor {gguf_name!r} has no HF Llama counterpart")


def unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head it interleaves the two rotary halves
    (rows x0,y0,x1,y1,...) where HF keeps them as two blocks (x0,x1,...,y0,y1,...).

    w: [n_heads * head_dim, ...] (a weight, or a 1-D bias) -> same shape, HF order.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    # [n_heads, half, 2, ...] -> [n_heads, 2, half, ...]: pair index becomes the block index.
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensor(reader_tensor, config: dict[str, Any], src: Path) -> np.ndarray:
    from gguf.quants import dequantize

    try:
        w = dequantize(reader_tensor.data, reader_tensor.tensor_type)
    except NotImplementedError as e:
        raise ValueError(f"{src}: tensor {reader_tensor.name!r} is "
                         f"{reader_tensor.tensor_type.name}, which gguf cannot dequantize") from e
    # GGUF lists dims fastest-first (ne0 = in_features); numpy/HF want them slowest-first.
    hf_shape = tuple(int(d) for d in reversed(reader_tensor.shape))
    w = np.asarray(w, dtype=np.float32).reshape(hf_shape)
    name = reader_tensor.name
    if ".attn_q." in name:
        w = unpermute_rotary_rows(w, config["num_attention_heads"])
    elif ".attn_k." in name:
        w = unpermute_rotary_rows(w, config["num_key_value_heads"])
    return w


def _write_weights(reader, config: dict, out: Path, max_shard_bytes: int, src: Path) -> list[str]:
    """Dequantize shard by shard so peak memory is one shard, not the whole float32 model."""
    import torch
    from safetensors.torch import save_file

    plan: list[list] = [[]]
    size = 0
    total = 0
    for t in reader.tensors:
        nbytes = int(np.prod([int(d) for d in t.shape])) * 4
        if plan[-1] and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(t)
        size += nbytes
        total += nbytes
    names = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    weight_map: dict[str, str] = {}
    for fname, group in zip(names, plan):
        shard = {}
        for t in group:
            hf = _hf_name(t.name, config["num_hidden_layers"], src)
            if hf in weight_map or hf in shard:
                raise ValueError(f"{src}: tensor {t.name!r} appears twice")
            w = np.ascontiguousarray(_hf_tensor(t, config, src))
            # F32 tensors come back as read-only views of the memory map; torch wants to own them.
            shard[hf] = torch.from_numpy(w if w.flags.writeable else w.copy())
            weight_map[hf] = fname
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        del shard
    if len(names) > 1:
        _write_json(out / "model.safetensors.index.json",
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names


def _write_tokenizer(src: Path, meta: _Metadata, out: Path) -> None:
    """transformers converts the GGUF vocabulary; we only make sure specials and template stuck."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    for role in ("bos", "eos", "pad", "unk"):
        key = "padding_token_id" if role == "pad" else f"{role}_token_id"
        tid = meta.get(f"tokenizer.ggml.{key}")
        if tid is None:
            continue
        token = tok.convert_ids_to_tokens(int(tid))
        if getattr(tok, f"{role}_token") != token:
            setattr(tok, f"{role}_token", token)
    template = meta.get("tokenizer.chat_template")
    if template and not tok.chat_template:
        tok.chat_template = template
    tok.save_pretrained(str(out))


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
