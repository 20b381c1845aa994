"""Quantized checkpoints end to end, on CPU: tiny Llama checkpoints packed here in the published
AutoAWQ, GPTQ (act order included), fp8 and compressed-tensors layouts must give the tokens of
HF transformers running the dequantized weights (with the same per-token fp8 activation
rounding for fp8); `quantization='fp8'` on a float checkpoint quantizes per channel at load.
Also: how the method is resolved from `quantization=` and config.json (vLLM's rules), the
errors for unsupported bits, group sizes, formats and methods, ignore lists, dummy weights that
are valid quantized tensors, and families without quantized layers.

The packers below follow the published algorithms loop by loop, independently of the engine's
unpackers. The helpers are imported by test_quantization_layers.py and
test_quantization_offload.py.
"""
from __future__ import annotations

import gc

import json

import pytest
import torch

from runner.engine import LLM, SamplingParams

VOCAB = 384
PROMPTS = ["Paris is the capital", "The quick brown fox jumps over the lazy dog and",
           "Numbers like 12, 345 and", "Hello"]
MAX_TOKENS = 12
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
FP8 = torch.float8_e4m3fn


# ------------------------------------------------------------------ published packings
def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def awq_pack(cols: torch.Tensor) -> torch.Tensor:
    """[R, C] ints 0..15 -> [R, C / 8] int32 as AutoAWQ's WQLinear_GEMM packs: nibble i of
    word c holds column 8c + AWQ_ORDER[i]."""
    r, c = cols.shape
    out = torch.zeros(r, c // 8, dtype=torch.int64)
    for word in range(c // 8):
        for i in range(8):
            out[:, word] |= cols[:, word * 8 + AWQ_ORDER[i]].long() << (4 * i)
    return _to_int32(out)


def gptq_pack_rows(q: torch.Tensor) -> torch.Tensor:
    """[K, N] -> [K / 8, N] int32 as GPTQ packs qweight: nibble j of word r is row 8r + j."""
    k, n = q.shape
    out = torch.zeros(k // 8, n, dtype=torch.int64)
    for r in range(k // 8):
        for j in range(8):
            out[r] |= q[8 * r + j].long() << (4 * j)
    return _to_int32(out)


def gptq_pack_cols(z: torch.Tensor) -> torch.Tensor:
    """[G, N] -> [G, N / 8] int32 as GPTQ packs qzeros: nibble j of word c is column 8c + j."""
    g, n = z.shape
    out = torch.zeros(g, n // 8, dtype=torch.int64)
    for c in range(n // 8):
        for j in range(8):
            out[:, c] |= z[:, 8 * c + j].long() << (4 * j)
    return _to_int32(out)


def quantize_int4(w: torch.Tensor, group: int, g_idx=None, sym=False, min_zero=0):
    """w [N, K] -> (q [K, N], scales [G, N] fp16, zeros [G, N], w_dq [N, K]): asymmetric
    min/max (or symmetric, zero 8) quantization of each group of input rows."""
    wt = w.t().float()                                                   # [K, N]
    k = wt.shape[0]
    groups = g_idx.long() if g_idx is not None else torch.arange(k) // group
    num_groups = int(groups.max()) + 1
    scales = torch.zeros(num_groups, wt.shape[1])
    zeros = torch.zeros(num_groups, wt.shape[1], dtype=torch.long)
    for gi in range(num_groups):
        block = wt[groups == gi]
        if sym:
            s = (block.abs().amax(0) / 7.5).clamp(min=1e-6)
            z = torch.full_like(zeros[gi], 8)
        else:
            lo, hi = block.amin(0).clamp(max=0), block.amax(0).clamp(min=0)
            s = ((hi - lo) / 15).clamp(min=1e-6)
            z = torch.round(-lo / s).long().clamp(min_zero, 15)
        scales[gi], zeros[gi] = s.half().float(), z               # fp16 scales, as stored
    q = torch.clamp(torch.round(wt / scales[groups]) + zeros[groups], 0, 15).long()
    w_dq = ((q - zeros[groups]) * scales[groups]).t().contiguous()
    return q, scales.half(), zeros, w_dq


def fp8_per_tensor(w: torch.Tensor):
    scale = w.abs().max().float() / 448.0
    q = (w.float() / scale).clamp(-448, 448).to(FP8)
    return q, scale.reshape(()), q.float() * scale


def fp8_per_channel(w: torch.Tensor):
    scale = w.abs().amax(1, keepdim=True).float() / 448.0                # [N, 1]
    q = (w.float() / scale).clamp(-448, 448).to(FP8)
    return q, scale, q.float() * scale


def fake_quant_fp8(x: torch.Tensor, static_scale=None) -> torch.Tensor:
    """Per-token (or static) fp8 rounding of a linear layer's input, in fp32."""
    xf = x.float()
    if static_scale is None:
        scale = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512))
    else:
        scale = static_scale
    return ((xf / scale).clamp(-448, 448).to(FP8).float() * scale).to(x.dtype)


# ------------------------------------------------------------------ tiny checkpoints
def llama_config(**kw):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, initializer_range=0.2, bos_token_id=1,
                       eos_token_id=2, pad_token_id=2, **kw)


def build_checkpoint(path, method: str, *, group: int = 32, act_order: bool = False,
                     sym: bool = False, static: bool = False, skip=(), quant_config=None,
                     config_file: str | None = None, seed: int = 0):
    """Write a tiny quantized Llama to `path`; returns (folder, HF model on the dequantized
    weights, fp8 activation rounding hooked in where the engine rounds). `skip`: linear names
    left unquantized (and listed so in the quantization_config)."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from tests.tiny_models import make_tokenizer

    torch.manual_seed(seed)
    cfg = llama_config()
    hf = LlamaForCausalLM(cfg).eval()
    state = {n: t.detach().clone() for n, t in hf.state_dict().items()}
    ckpt, ref = {}, dict(state)
    input_scales, orders = {}, {}
    gen = torch.Generator().manual_seed(seed + 1)
    for name, t in state.items():
        lin = next((s for s in LINEARS if f".{s}." in name), None)
        if lin is None or method is None or lin.split(".")[1] in skip:
            ckpt[name] = t
            continue
        base = name[:-len(".weight")]
        if method == "awq":
            q, scales, zeros, w_dq = quantize_int4(t, group)
            ckpt[base + ".qweight"] = awq_pack(q)
            ckpt[base + ".qzeros"] = awq_pack(zeros)
            ckpt[base + ".scales"] = scales
        elif method == "gptq":
            k = t.shape[1]
            # act order: the parts of one input (q/k/v, gate/up) share their row order
            key = base.rsplit(".", 1)[0] + ("" if lin.endswith(("o_proj", "down_proj"))
                                            else "/in")
            if key not in orders:
                orders[key] = torch.argsort(torch.randperm(k, generator=gen))
            g_idx = (orders[key] // group).int() if act_order else (torch.arange(k) // group).int()
            q, scales, zeros, w_dq = quantize_int4(t, group, g_idx, sym=sym, min_zero=1)
            ckpt[base + ".qweight"] = gptq_pack_rows(q)
            ckpt[base + ".qzeros"] = gptq_pack_cols(zeros - 1)          # v1 stores zero - 1
            ckpt[base + ".scales"] = scales
            ckpt[base + ".g_idx"] = g_idx
            ckpt[base + ".bias"] = torch.zeros(t.shape[0], dtype=torch.float16)   # GPTQ habit
        elif method == "fp8":
            q, scale, w_dq = fp8_per_tensor(t)
            ckpt[base + ".weight"], ckpt[base + ".weight_scale"] = q, scale
            if static:
                s = torch.tensor(0.02 + 0.01 * len(input_scales))
                ckpt[base + ".input_scale"] = input_scales[base] = s
        elif method == "compressed-tensors":
            q, scale, w_dq = fp8_per_channel(t)
            ckpt[base + ".weight"], ckpt[base + ".weight_scale"] = q, scale
        elif method == "online-fp8":
            from runner.engine.quantization.fp8 import quantize_weight_per_channel
            ckpt[name] = t
            wq, s = quantize_weight_per_channel(t)
            w_dq = wq.float() * s[:, None]
        ref[name] = w_dq
    save_file({n: t.contiguous() for n, t in ckpt.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    if quant_config is not None and config_file is None:
        cfg.quantization_config = quant_config
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(path)
    if config_file is not None:
        (path / config_file).write_text(json.dumps(quant_config))
    make_tokenizer(VOCAB).save_pretrained(path)
    hf.load_state_dict(ref)
    if method in ("fp8", "compressed-tensors", "online-fp8"):
        _hook_fp8_inputs(hf, static, input_scales, skip)
    hf.generation_config.eos_token_id = None
    return str(path), hf


def _hook_fp8_inputs(hf, static: bool, input_scales: dict, skip) -> None:
    """The engine rounds each linear layer's input to fp8; q/k/v (and gate/up) share one
    input, so a static scale is the largest of the fused parts' scales, as vLLM takes it."""
    fused = {"q_proj": ("q_proj", "k_proj", "v_proj"), "k_proj": ("q_proj", "k_proj", "v_proj"),
             "v_proj": ("q_proj", "k_proj", "v_proj"), "gate_proj": ("gate_proj", "up_proj"),
             "up_proj": ("gate_proj", "up_proj")}
    for name, mod in hf.named_modules():
        proj = name.rsplit(".", 1)[-1]
        if not isinstance(mod, torch.nn.Linear) or ".layers." not in name or proj in skip:
            continue
        scale = None
        if static:
            parts = fused.get(proj, (proj,))
            prefix = "model." + name[:-len(proj)] if not name.startswith("model.") else \
                name[:-len(proj)]
            scale = max(input_scales[prefix + p].item() for p in parts)
        mod.register_forward_pre_hook(
            lambda m, args, s=scale: (fake_quant_fp8(args[0], s),))


def hf_greedy(hf, ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                          pad_token_id=2)
    return out[0, len(ids):].tolist()


def assert_engine_equals_reference(folder: str, hf, atol: float = 2e-4, **llm_kw) -> LLM:
    """Greedy tokens equal the reference's; the chosen tokens' logprobs within atol (fp8:
    looser, since the engine's and HF's float32 activations differ in their last bits and
    now and then round to neighbouring fp8 values)."""
    llm = LLM(folder, max_model_len=128, max_num_batched_tokens=8, max_num_seqs=4,
              block_size=4, **llm_kw)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0)
    for out in llm.generate(PROMPTS, params, use_tqdm=False):
        comp = out.outputs[0]
        assert comp.token_ids == hf_greedy(hf, out.prompt_token_ids), out.prompt
        ids = out.prompt_token_ids + comp.token_ids
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        n = len(out.prompt_token_ids)
        want = lp[n - 1:-1].gather(1, torch.tensor(comp.token_ids)[:, None])[:, 0]
        got = torch.tensor([comp.logprobs[j][t].logprob for j, t in enumerate(comp.token_ids)])
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
    return llm


AWQ_CFG = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
           "version": "gemm"}
GPTQ_CFG = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False,
            "sym": False, "checkpoint_format": "gptq"}
CT_CFG = {"quant_method": "compressed-tensors", "format": "float-quantized",
          "config_groups": {"group_0": {
              "targets": ["Linear"],
              "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                          "symmetric": True, "dynamic": False},
              "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                    "dynamic": True, "symmetric": True}}},
          "ignore": ["lm_head"], "kv_cache_scheme": None}


# ------------------------------------------------------------------ tokens against references
@pytest.mark.parametrize("case", ["awq", "awq_skip_down", "gptq", "gptq_act_order_sym",
                                  "fp8_dynamic", "fp8_static", "compressed_tensors",
                                  "compressed_tensors_ignore", "online_fp8"])
def test_engine_tokens_equal_dequantized_reference(case, tmp_path):
    kw, llm_kw = {}, {}
    if case == "awq":
        kw = dict(method="awq", quant_config=AWQ_CFG)
    elif case == "awq_skip_down":          # modules_to_not_convert: substrings of layer names
        kw = dict(method="awq", skip=("down_proj",),
                  quant_config={**AWQ_CFG, "modules_to_not_convert": ["down_proj"]},
                  config_file="quant_config.json")            # the older, separate file
        llm_kw = dict(quantization="awq")
    elif case == "gptq":
        kw = dict(method="gptq", quant_config=GPTQ_CFG)
    elif case == "gptq_act_order_sym":
        kw = dict(method="gptq", act_order=True, sym=True,
                  quant_config={**GPTQ_CFG, "desc_act": True, "sym": True})
        llm_kw = dict(quantization="gptq_marlin")             # vLLM's name, same checkpoint
    elif case == "fp8_dynamic":
        kw = dict(method="fp8", quant_config={"quant_method": "fp8",
                                              "activation_scheme": "dynamic"})
    elif case == "fp8_static":
        kw = dict(method="fp8", static=True,
                  quant_config={"quant_method": "fp8", "activation_scheme": "static"})
    elif case == "compressed_tensors":
        kw = dict(method="compressed-tensors", quant_config=CT_CFG)
    elif case == "compressed_tensors_ignore":
        kw = dict(method="compressed-tensors", skip=("down_proj",),
                  quant_config={**CT_CFG, "ignore": ["lm_head", "re:.*down_proj$"]})
    elif case == "online_fp8":
        kw = dict(method="online-fp8")
        llm_kw = dict(quantization="fp8")
    folder, hf = build_checkpoint(tmp_path, **kw)
    atol = 3e-2 if "fp8" in case or "compressed" in case else 2e-4
    llm = assert_engine_equals_reference(folder, hf, atol, **llm_kw)
    mlp = llm.llm_engine.executor.model_runner.model.model.layers[0].mlp
    skipped = case in ("awq_skip_down", "compressed_tensors_ignore")
    if case.startswith(("awq", "gptq")):
        assert hasattr(mlp.gate_up_proj, "qweight")
        assert hasattr(mlp.down_proj, "qweight") != skipped
    else:
        assert mlp.gate_up_proj.weight.dtype == FP8
        assert (mlp.down_proj.weight.dtype == FP8) != skipped


# ------------------------------------------------------------------ resolution rules
def test_resolution_follows_vllm():
    from runner.engine.quantization import resolve_quantization
    plain, awq = llama_config(), llama_config()
    awq.quantization_config = {"quant_method": "AWQ", "bits": 4}
    ct = llama_config()
    ct.quantization_config = {"quant_method": "compressed_tensors"}
    assert resolve_quantization(None, plain) is None
    assert resolve_quantization("fp8", plain) == "fp8"                 # online
    assert resolve_quantization(None, awq) == "awq"                    # read from config.json
    assert resolve_quantization("awq_marlin", awq) == "awq"
    assert resolve_quantization(None, ct) == "compressed-tensors"      # normalized name
    with pytest.raises(ValueError, match=r"model config \(awq\) does not match .* \(gptq\)"):
        resolve_quantization("gptq", awq)
    with pytest.raises(ValueError, match="quantization='int3' is not supported; supported: "
                                         "awq, compressed-tensors, fp8, gptq"):
        resolve_quantization("int3", plain)
    bnb = llama_config()
    bnb.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(NotImplementedError, match="quant_method='bitsandbytes'"):
        resolve_quantization(None, bnb)
    assert resolve_quantization(None, plain, is_gguf=True) is None
    assert resolve_quantization("gguf", plain, is_gguf=True) is None
    with pytest.raises(ValueError, match="dequantized when the file is converted"):
        resolve_quantization("awq", plain, is_gguf=True)
    with pytest.raises(ValueError, match="needs model to be a .gguf file"):
        resolve_quantization("gguf", plain)


@pytest.mark.parametrize("quant_config, pattern", [
    ({**AWQ_CFG, "bits": 8}, "quantization='awq' with bits=8 is not supported"),
    ({**AWQ_CFG, "group_size": 0}, "group_size=0 is not supported"),
    ({**AWQ_CFG, "version": "gemv"}, "version='gemv' is not supported"),
    ({**AWQ_CFG, "zero_point": False}, "zero_point=False is not supported"),
    ({**GPTQ_CFG, "bits": 3}, "quantization='gptq' with bits=3 is not supported"),
    ({**GPTQ_CFG, "lm_head": True}, "quantized lm_head"),
    ({**GPTQ_CFG, "checkpoint_format": "marlin"}, "checkpoint_format='marlin'"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
     "weight_block_size"),
    ({"quant_method": "fp8", "activation_scheme": "per-head"}, "activation_scheme 'per-head'"),
    ({**CT_CFG, "format": "pack-quantized"}, "format='pack-quantized'"),
    ({**CT_CFG, "config_groups": {"group_0": {
        "targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
        "input_activations": None}}}, "num_bits=8 type='int'"),
    ({**CT_CFG, "kv_cache_scheme": {"num_bits": 8, "type": "float"}}, "kv_cache_scheme"),
])
def test_unsupported_settings_are_named(quant_config, pattern, tmp_path):
    cfg = llama_config()
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.quantization_config = quant_config
    cfg.save_pretrained(tmp_path)
    with pytest.raises((ValueError, NotImplementedError), match=pattern):
        LLM(str(tmp_path), load_format="dummy", skip_tokenizer_init=True, max_model_len=64)


def test_gptq_without_settings_and_unquantized_families(tmp_path):
    from transformers import OPTConfig
    cfg = llama_config()
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="quantization='gptq' needs the checkpoint's"):
        LLM(str(tmp_path / "llama"), quantization="gptq", load_format="dummy",
            skip_tokenizer_init=True)
    opt = OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    vocab_size=VOCAB, architectures=["OPTForCausalLM"])
    opt.save_pretrained(tmp_path / "opt")
    with pytest.raises(NotImplementedError, match="quantization='fp8' is not supported for "
                                                  "OPTForCausalLM"):
        LLM(str(tmp_path / "opt"), quantization="fp8", load_format="dummy",
            skip_tokenizer_init=True, max_model_len=64)


# ------------------------------------------------------------------ dummy weights
@pytest.mark.parametrize("quant_config", [AWQ_CFG, {**GPTQ_CFG, "desc_act": True},
                                          {"quant_method": "fp8", "activation_scheme": "static"},
                                          CT_CFG, None], ids=["awq", "gptq", "fp8", "ct", "online"])
def test_dummy_weights_are_valid_quantized_tensors(quant_config, tmp_path):
    cfg = llama_config()
    cfg.architectures = ["LlamaForCausalLM"]
    if quant_config is not None:
        cfg.quantization_config = quant_config
    cfg.save_pretrained(tmp_path)
    llm = LLM(str(tmp_path), load_format="dummy", skip_tokenizer_init=True, max_model_len=64,
              quantization=None if quant_config else "fp8")
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}],
                       SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=0),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 4
    assert all(torch.isfinite(torch.tensor(lp[t].logprob))
               for lp, t in zip(out.logprobs, out.token_ids))


# ------------------------------------------------------------------ the runner's presets
@pytest.mark.parametrize("preset, method", [("llama3_8b_fp8", "fp8"), ("llama3_8b_awq", "awq"),
                                            ("llama3_8b_gptq", "gptq")])
def test_presets_hand_quantization_to_the_engine(preset, method):
    """model=<preset> composes, and its quantization reaches the EngineArgs that every mode
    builds (the one builder, runner/backends/engine_args.py; tests/runner/test_engine_args.py
    checks each mode uses it)."""
    from runner import cli
    from runner.backends.engine_args import engine_args
    from runner.model_source import ModelSource

    cfg = cli.to_run_config(cli.compose([f"model={preset}", "engine.cpu_offload_gb=2"]))
    args = engine_args(cfg.model, cfg.engine, 0, ModelSource(cfg.model.model, "hub"))
    assert args.quantization == method and args.cpu_offload_gb == 2


# ------------------------------------------------------------------ CUDA
GPU_CASES = {
    "awq": dict(method="awq", quant_config=AWQ_CFG),
    "gptq_act_order": dict(method="gptq", act_order=True,
                           quant_config={**GPTQ_CFG, "desc_act": True}),
    "fp8_static": dict(method="fp8", static=True,
                       quant_config={"quant_method": "fp8", "activation_scheme": "static"}),
    "compressed_tensors": dict(method="compressed-tensors", quant_config=CT_CFG),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(GPU_CASES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_kernels_match_the_torch_path(case, dtype, tmp_path):
    """On CUDA the Triton path (int4 GEMV for decode, GEMM for prefill chunks; fp8 quant
    kernel + torch._scaled_mm or the fp8 GEMM; CUDA graphs over them) against
    kernel_backend='torch' on the same checkpoint: int4 float32 tokens equal, logprobs close
    (fp8: activations now and then round to neighbouring fp8 values, as on CPU)."""
    folder, _ = build_checkpoint(tmp_path, **GPU_CASES[case])
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0,
                            prompt_logprobs=0)
    runs = {}
    for backend in ("triton", "torch"):
        llm = LLM(folder, dtype=dtype, kernel_backend=backend, max_model_len=128,
                  max_num_batched_tokens=8, max_num_seqs=4, block_size=16,
                  gpu_memory_utilization=0.3)
        runs[backend] = llm.generate(PROMPTS, params, use_tqdm=False)
        if backend == "triton":
            assert llm.llm_engine.get_stats()["cuda_graph_steps"] > 0
        llm.llm_engine.shutdown()
        del llm  # its KV cache goes before the next engine sizes its own
        gc.collect()
    for fast, ref in zip(runs["triton"], runs["torch"]):
        int4 = case.startswith(("awq", "gptq"))
        if dtype == "float32" and int4:
            assert fast.outputs[0].token_ids == ref.outputs[0].token_ids, fast.prompt
        lp_fast = [d[t].logprob for d, t in zip(fast.prompt_logprobs[1:],
                                                 fast.prompt_token_ids[1:])]
        lp_ref = [d[t].logprob for d, t in zip(ref.prompt_logprobs[1:],
                                                ref.prompt_token_ids[1:])]
        tol = (2e-3 if int4 else 3e-2) if dtype == "float32" else 0.15
        torch.testing.assert_close(torch.tensor(lp_fast), torch.tensor(lp_ref), atol=tol,
                                   rtol=0)
