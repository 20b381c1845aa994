"""Every decoder family in the engine against HF transformers on the same tiny float32 weights,
and the one registry that maps HF architectures to the engine's classes.

Llama-2 (biases, linear rope scaling), Llama-3 (GQA, llama3 rope scaling), Mistral (sliding
window), Qwen2 (q/k/v biases; per-layer sliding window), Qwen3 (q/k norm, head_dim != hidden /
heads; per-layer sliding window), OPT and GPT-2 each get a tiny random config (peaked weights, so
greedy decoding has no near-ties; norm weights and every bias randomized too, so a mis-loaded
one shows), saved with the test tokenizer. Greedy tokens must equal HF's generate token for
token with chunked prefill over a paged cache of 4-token blocks; the chosen tokens' logprobs and
the prompt logprobs must equal HF's log_softmax within 1e-4. The Llama relatives are one class
with per-family flags: each gets the same fast-path hooks (GEMV-capable layers, forward_piece
for piecewise CUDA graphs, tensor parallelism). Also: legacy checkpoint names load, unsupported
config fields raise NotImplementedError naming the field, and the unknown-architecture error
lists the families.
"""
from __future__ import annotations

import pytest
import torch

from runner.engine import LLM, SamplingParams

PROMPTS = [
    "Paris is the capital",
    "The quick brown fox jumps over the lazy dog and the river flows north through",
    "Hello",
    "Numbers like 12, 345 and 6789 appear in many passages about history. Question: who",
    "A paged KV cache",
]
MAX_TOKENS = 16
VOCAB = 384
SPECIAL = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _config(family: str):
    from transformers import (GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config,
                              Qwen3Config)

    decoder = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=256, initializer_range=0.2,
                   **SPECIAL)
    if family == "llama2":           # MHA, q/k/v/o and MLP biases, linear rope scaling
        return LlamaConfig(num_key_value_heads=4, attention_bias=True, mlp_bias=True,
                           rope_scaling={"rope_type": "linear", "factor": 2.0}, **decoder)
    if family == "llama3":           # GQA, llama3 rope scaling, untied head
        return LlamaConfig(num_key_value_heads=2, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 32}, **decoder)
    if family == "mistral":          # every layer attends over the last 8 tokens only
        return MistralConfig(num_key_value_heads=2, sliding_window=8, **decoder)
    if family == "qwen2":            # q/k/v biases (no o_proj bias), tied head
        return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **decoder)
    if family == "qwen2_sliding":    # second layer attends over the last 8 tokens only
        return Qwen2Config(num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                           max_window_layers=1, **decoder)
    if family == "opt":              # opt-125m layout: pre-LN, tied head
        return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256, init_std=0.2,
                         **SPECIAL)
    if family == "opt_350m":         # opt-350m layout: post-LN, projected embeddings
        return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256, init_std=0.2,
                         do_layer_norm_before=False, word_embed_proj_dim=32, **SPECIAL)
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256,
                          initializer_range=0.2, **SPECIAL)
    if family == "gpt2_untied":      # untied head, per-layer score scaling
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=96,
                          initializer_range=0.2, tie_word_embeddings=False,
                          scale_attn_by_inverse_layer_idx=True, **SPECIAL)
    if family == "qwen3":            # head_dim 32 != 64 / 4, GQA, tied head
        return Qwen3Config(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                           **decoder)
    if family == "qwen3_sliding":    # second layer attends over the last 8 tokens only
        return Qwen3Config(num_key_value_heads=2, head_dim=16, use_sliding_window=True,
                           sliding_window=8, max_window_layers=1, **decoder)
    raise ValueError(family)


LLAMA_RELATIVES = ["llama2", "llama3", "mistral", "qwen2", "qwen2_sliding", "qwen3",
                   "qwen3_sliding"]
ARCHITECTURES = {"llama2": "LlamaForCausalLM", "llama3": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen2_sliding": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "qwen3_sliding": "Qwen3ForCausalLM", "opt": "OPTForCausalLM",
                 "opt_350m": "OPTForCausalLM", "gpt2": "GPT2LMHeadModel",
                 "gpt2_untied": "GPT2LMHeadModel"}


def _randomize_norms_and_biases(model: torch.nn.Module, seed: int) -> None:
    """HF initializes norms to 1/0 and biases to 0; random values catch a parameter that is
    loaded into the wrong place or not at all."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or ".ln_" in name or name.startswith(("ln_", "transformer.ln_"))
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif is_norm and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    """`family_model(family) -> (folder, hf_model, tokenizer)`, built once per module."""
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import make_tokenizer

    cache: dict = {}

    def build(family: str):
        if family not in cache:
            path = tmp_path_factory.mktemp(f"family_{family}")
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_config(family), dtype=torch.float32)
            _randomize_norms_and_biases(model, seed=1)
            model.save_pretrained(path)
            tok = make_tokenizer(VOCAB)
            tok.save_pretrained(path)
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            hf.generation_config.eos_token_id = None      # ignore_eos: HF must not stop
            cache[family] = (str(path), hf, tok)
        return cache[family]

    return build


def hf_greedy(model, tok, prompt_ids: list[int], max_new: int) -> list[int]:
    """HF's greedy continuation of the engine's prompt ids (the engine's tokenizer is what
    AutoTokenizer makes of the folder; for model_type qwen2 that is not `tok`)."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def hf_token_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i+1] | ids[:i+1]) for every i, from one full forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:]).view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("family", LLAMA_RELATIVES + ["opt", "opt_350m", "gpt2", "gpt2_untied"])
def test_greedy_and_logprobs_equal_hf(family, family_model):
    path, hf, tok = family_model(family)
    # 8 tokens per step: most prompts are split into several prefill chunks, mixed with decodes
    llm = LLM(path, max_model_len=128, max_num_batched_tokens=8, max_num_seqs=8, block_size=4)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0,
                            prompt_logprobs=0)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        comp = out.outputs[0]
        assert comp.token_ids == hf_greedy(hf, tok, out.prompt_token_ids, MAX_TOKENS), \
            (family, prompt)
        ids = out.prompt_token_ids + comp.token_ids
        ref = hf_token_logprobs(hf, ids)
        n_prompt = len(out.prompt_token_ids)
        for i in range(1, n_prompt):
            got = out.prompt_logprobs[i][out.prompt_token_ids[i]].logprob
            assert abs(got - ref[i - 1].item()) < 1e-4, (family, prompt, i)
        got = torch.tensor([comp.logprobs[j][t].logprob for j, t in enumerate(comp.token_ids)])
        assert torch.allclose(got, ref[n_prompt - 1:], atol=1e-4), (family, prompt)


def _engine_model(family: str, pc=None):
    from runner.engine.models import get_model_class
    cfg = _config(family)
    cfg.architectures = [ARCHITECTURES[family]]
    return get_model_class(cfg)(cfg, pc)


@pytest.mark.parametrize("family,rename", [
    # opt-125m on the hub: OPTModel names (`decoder.*`) and no lm_head
    ("opt", lambda n: None if n == "lm_head.weight" else n.removeprefix("model.")),
    # the original gpt2 checkpoint: no `transformer.` prefix, causal-mask buffers included
    ("gpt2", lambda n: n.removeprefix("transformer.")),
])
def test_legacy_checkpoint_names_load(family, rename, family_model):
    _, hf, _ = family_model(family)
    state = hf.state_dict()
    current, legacy = _engine_model(family), _engine_model(family)
    names_current = current.load_weights(state.items())
    legacy_state = [(rename(n), t) for n, t in state.items() if rename(n) is not None]
    if family == "gpt2":
        legacy_state.append(("h.0.attn.bias", torch.ones(1, 1, 256, 256)))
        legacy_state.append(("h.0.attn.masked_bias", torch.tensor(-1e4)))
    names_legacy = legacy.load_weights(legacy_state)
    expected = {n for n, _ in current.named_parameters(remove_duplicate=False)}
    assert names_current == names_legacy == expected
    for (n, a), (_, b) in zip(current.named_parameters(), legacy.named_parameters()):
        assert torch.equal(a, b), n


def test_unsupported_config_fields_raise():
    from transformers import GPT2Config, LlamaConfig, OPTConfig, Qwen3Config

    from runner.engine.models.gpt2 import GPT2LMHeadModel
    from runner.engine.models.llama import LlamaForCausalLM
    from runner.engine.models.opt import OPTForCausalLM

    tiny = dict(num_hidden_layers=1, num_attention_heads=2, vocab_size=32)
    with pytest.raises(NotImplementedError, match="activation_function"):
        OPTForCausalLM(OPTConfig(hidden_size=8, ffn_dim=16, activation_function="swish",
                                 **tiny))
    with pytest.raises(NotImplementedError, match="add_cross_attention"):
        GPT2LMHeadModel(GPT2Config(n_embd=8, add_cross_attention=True, **tiny))
    with pytest.raises(NotImplementedError, match="qwen3 hidden_act='gelu'"):
        LlamaForCausalLM(Qwen3Config(hidden_size=8, intermediate_size=16, head_dim=4,
                                     hidden_act="gelu", **tiny))
    with pytest.raises(NotImplementedError, match="llama hidden_act='gelu'"):
        LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=16, hidden_act="gelu",
                                     **tiny))
    with pytest.raises(NotImplementedError, match="rope_scaling type 'yarn'"):
        LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=16, **tiny,
                                     rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 8}))


def test_unknown_architecture_lists_families():
    from transformers import PretrainedConfig

    from runner.engine.models import get_model_class, is_embedding_model

    cfg = PretrainedConfig(architectures=["FalconForCausalLM"])
    with pytest.raises(ValueError) as err:
        get_model_class(cfg)
    assert not is_embedding_model(cfg)
    msg = str(err.value)
    assert "FalconForCausalLM" in msg
    for arch in set(ARCHITECTURES.values()) | {"BertModel"}:
        assert arch in msg


def test_one_registry_for_decoders_and_encoders():
    """Decoders and encoders come from the same table; is_embedding_model (the only one: the
    LLM, the config checks and the pooling runner all use it) is true for the encoders."""
    from transformers import BertConfig, PretrainedConfig

    from runner.engine import config as engine_config, llm, pooling
    from runner.engine.models import get_model_class, is_embedding_model
    from runner.engine.models.bert import BertModel
    from runner.engine.models.llama import LlamaForCausalLM

    for family, arch in ARCHITECTURES.items():
        cfg = PretrainedConfig(architectures=[arch])
        assert not is_embedding_model(cfg)
        if family in LLAMA_RELATIVES:
            assert get_model_class(cfg) is LlamaForCausalLM
    bert = BertConfig(architectures=["BertModel"])
    assert is_embedding_model(bert) and get_model_class(bert) is BertModel
    assert not hasattr(llm, "is_embedding_model")      # LLM asks the config's runner
    assert engine_config.resolve_runner("auto", "auto", bert) == "pooling"
    assert engine_config.resolve_runner("auto", "auto", cfg) == "generate"
    assert not hasattr(pooling, "is_embedding_model") and not hasattr(pooling, "EMBEDDING_MODELS")
    assert "is_embedding_model" not in vars(engine_config)      # imported where it is used


def test_family_flags_and_sliding_windows():
    from runner.engine.layers.layernorm import RMSNorm

    def attn(family, layer=0):
        return _engine_model(family).model.layers[layer].self_attn

    llama2, llama3, qwen2, qwen3 = (attn(f) for f in ("llama2", "llama3", "qwen2", "qwen3"))
    assert llama2.qkv_proj.bias is not None and llama2.o_proj.bias is not None  # attention_bias
    assert llama3.qkv_proj.bias is None and llama3.o_proj.bias is None
    assert qwen2.qkv_proj.bias is not None and qwen2.o_proj.bias is None        # q/k/v only
    assert isinstance(qwen3.q_norm, RMSNorm) and qwen3.q_norm.weight.shape == (32,)
    assert qwen3.head_dim == 32 and llama2.q_norm is None and qwen2.k_norm is None
    windows = {f: [attn(f, i).attn.sliding_window for i in range(2)]
               for f in ("llama3", "mistral", "qwen2", "qwen2_sliding", "qwen3",
                         "qwen3_sliding")}
    assert windows == {"llama3": [None, None], "mistral": [8, 8], "qwen2": [None, None],
                       "qwen2_sliding": [None, 8], "qwen3": [None, None],
                       "qwen3_sliding": [None, 8]}


@pytest.mark.parametrize("family", LLAMA_RELATIVES)
def test_every_relative_gets_the_fast_paths(family, family_model):
    """Built with use_triton, every linear layer and the LM head can take the GEMV and every
    norm / rope / attention its kernel; the model is TP-capable; and the forward in pieces of
    consecutive layers (what piecewise CUDA graphs replay) equals the whole forward."""
    from runner.engine.attention import AttentionMetadata
    from runner.engine.layers.linear import LinearBase
    from runner.engine.layers.vocab_embedding import ParallelLMHead
    from runner.engine.parallel import ParallelContext

    fast = _engine_model(family, ParallelContext(use_triton=True))
    assert type(fast).supports_tensor_parallel and hasattr(fast, "forward_piece")
    flags = [m.use_triton for m in fast.modules() if isinstance(m, LinearBase)
             or isinstance(m, ParallelLMHead) or hasattr(m, "use_triton")]
    assert flags and all(flags)

    _, hf, _ = family_model(family)
    model = _engine_model(family)
    model.load_weights(hf.state_dict().items())
    num_tokens, bs = 11, 4
    positions = torch.arange(num_tokens)
    ids = torch.randint(3, VOCAB, (num_tokens,), generator=torch.Generator().manual_seed(0))

    def run(pieces):
        caches = [torch.zeros(2, 4, bs, model.num_kv_heads, model.head_dim)
                  for _ in range(model.num_layers)]
        meta = AttentionMetadata(
            slot_mapping=positions.clone(), query_start_loc=[0, num_tokens],
            seq_lens=[num_tokens], block_tables=torch.tensor([[0, 1, 2]], dtype=torch.int32),
            max_query_len=num_tokens, max_seq_len=num_tokens, prefill_idx=(0,))
        if pieces is None:
            return model(ids, positions, caches, meta)
        hidden = residual = None
        for layers in pieces:
            hidden, residual = model.forward_piece(layers, ids, positions, hidden, residual,
                                                   caches, meta)
        return hidden

    with torch.inference_mode():
        whole = run(None)
        assert torch.equal(run([range(0, 1), range(1, 2)]), whole)
        with torch.no_grad():
            want = hf.model(ids[None]).last_hidden_state[0]
        torch.testing.assert_close(whole, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("family", LLAMA_RELATIVES)
def test_gpu_fast_paths_equal_hf(family, family_model):
    """On CUDA every relative runs the Triton kernels, the GEMV for its decode batches (5 rows)
    and piecewise CUDA graphs; fp32 weights: HF's greedy tokens (ieee dots, no TF32), logprobs
    close to HF's on CPU. With an fp8 cache the graphs give the torch reference path's tokens
    over the same cache for all but at most one prompt (a key may round to the other fp8
    neighbour)."""
    import gc

    path, hf, tok = family_model(family)
    kw = dict(max_model_len=128, max_num_batched_tokens=8, max_num_seqs=8, block_size=4,
              num_gpu_blocks_override=256, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0)

    def run(**extra):
        llm = LLM(path, **kw, **extra)
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        stats = llm.llm_engine.get_stats()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        return outs, stats

    outs, stats = run(kernel_backend="triton", enforce_eager=False)
    assert stats["kernel_backend"] == "triton" and stats["cuda_graph_steps"] > 0
    for prompt, out in zip(PROMPTS, outs):
        comp = out.outputs[0]
        assert comp.token_ids == hf_greedy(hf, tok, out.prompt_token_ids, MAX_TOKENS), prompt
        ref = hf_token_logprobs(hf, out.prompt_token_ids + comp.token_ids)
        got = torch.tensor([comp.logprobs[j][t].logprob for j, t in enumerate(comp.token_ids)])
        torch.testing.assert_close(got, ref[len(out.prompt_token_ids) - 1:], atol=1e-3, rtol=0)

    fast, stats = run(kernel_backend="triton", enforce_eager=False, kv_cache_dtype="fp8")
    assert stats["cuda_graph_steps"] > 0 and stats["kv_cache_dtype"] == "fp8"
    ref, _ = run(kernel_backend="torch", enforce_eager=True, kv_cache_dtype="fp8")
    equal = sum(a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(fast, ref))
    assert equal >= len(PROMPTS) - 1, equal
