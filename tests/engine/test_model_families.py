"""OPT, GPT-2 and Qwen3 in the engine against HF transformers on the same tiny float32 weights.

Each family gets a tiny random config (peaked weights, so greedy decoding has no near-ties; norm
weights and every bias randomized too, so a mis-loaded one shows), saved with the test tokenizer.
Greedy tokens must equal HF's generate token for token with chunked prefill over a paged cache
of 4-token blocks; the chosen tokens' logprobs and the prompt logprobs must equal HF's
log_softmax within 1e-4. Also: legacy checkpoint names load, unsupported config fields raise
NotImplementedError naming the field, and the unknown-architecture error lists the families.
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
    from transformers import GPT2Config, OPTConfig, Qwen3Config

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
        return Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                           max_position_embeddings=256, initializer_range=0.2,
                           tie_word_embeddings=True, **SPECIAL)
    if family == "qwen3_sliding":    # second layer attends over the last 8 tokens only
        return Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           max_position_embeddings=256, initializer_range=0.2,
                           use_sliding_window=True, sliding_window=8, max_window_layers=1,
                           **SPECIAL)
    raise ValueError(family)


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


def hf_greedy(model, tok, prompt: str, max_new: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
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


@pytest.mark.parametrize("family", ["opt", "opt_350m", "gpt2", "gpt2_untied", "qwen3",
                                    "qwen3_sliding"])
def test_greedy_and_logprobs_equal_hf(family, family_model):
    path, hf, tok = family_model(family)
    # 8 tokens per step: most prompts are split into several prefill chunks, mixed with decodes
    llm = LLM(path, max_model_len=128, max_num_batched_tokens=8, max_num_seqs=8, block_size=4)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0,
                            prompt_logprobs=0)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        comp = out.outputs[0]
        assert comp.token_ids == hf_greedy(hf, tok, prompt, MAX_TOKENS), (family, prompt)
        ids = out.prompt_token_ids + comp.token_ids
        ref = hf_token_logprobs(hf, ids)
        n_prompt = len(out.prompt_token_ids)
        for i in range(1, n_prompt):
            got = out.prompt_logprobs[i][out.prompt_token_ids[i]].logprob
            assert abs(got - ref[i - 1].item()) < 1e-4, (family, prompt, i)
        got = torch.tensor([comp.logprobs[j][t].logprob for j, t in enumerate(comp.token_ids)])
        assert torch.allclose(got, ref[n_prompt - 1:], atol=1e-4), (family, prompt)


def _engine_model(family: str):
    from runner.engine.models import get_model_class
    cfg = _config(family)
    cfg.architectures = [{"opt": "OPTForCausalLM", "gpt2": "GPT2LMHeadModel"}[family]]
    return get_model_class(cfg)(cfg)


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
    from transformers import GPT2Config, OPTConfig, Qwen3Config

    from runner.engine.models.gpt2 import GPT2LMHeadModel
    from runner.engine.models.opt import OPTForCausalLM
    from runner.engine.models.qwen3 import Qwen3ForCausalLM

    tiny = dict(num_hidden_layers=1, num_attention_heads=2, vocab_size=32)
    with pytest.raises(NotImplementedError, match="activation_function"):
        OPTForCausalLM(OPTConfig(hidden_size=8, ffn_dim=16, activation_function="swish",
                                 **tiny))
    with pytest.raises(NotImplementedError, match="add_cross_attention"):
        GPT2LMHeadModel(GPT2Config(n_embd=8, add_cross_attention=True, **tiny))
    with pytest.raises(NotImplementedError, match="hidden_act"):
        Qwen3ForCausalLM(Qwen3Config(hidden_size=8, intermediate_size=16, head_dim=4,
                                     hidden_act="gelu", **tiny))


def test_unknown_architecture_lists_families():
    from transformers import PretrainedConfig

    from runner.engine.models import get_model_class

    cfg = PretrainedConfig(architectures=["FalconForCausalLM"])
    with pytest.raises(ValueError) as err:
        get_model_class(cfg)
    msg = str(err.value)
    assert "FalconForCausalLM" in msg
    for arch in ("OPTForCausalLM", "GPT2LMHeadModel", "Qwen3ForCausalLM", "LlamaForCausalLM"):
        assert arch in msg
