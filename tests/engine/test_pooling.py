"""LLM.embed / classify / score / reward / encode on tiny random BERTs and a Llama classifier,
against HF transformers on the same weights (fp32, CPU), and PoolingParams' vLLM 0.24 rules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.engine import LLM
from runner.engine.outputs import (ClassificationRequestOutput, EmbeddingRequestOutput,
                                   PoolingRequestOutput, ScoringRequestOutput)
from runner.engine.pooler_config import PoolerConfig
from runner.engine.pooling_params import PoolingParams

TEXTS = ["Hello world!", "The quick brown fox jumps over the lazy dog.",
         "Paris is the capital of France.", "the river"]


def _hf(cls, path):
    return cls.from_pretrained(path, dtype=torch.float32).eval()


def _tok(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def bert(tiny_bert):
    # a small token budget: the batch is cut over several forward passes
    return LLM(tiny_bert, device="cpu", max_num_batched_tokens=32, max_num_seqs=2)


@pytest.fixture(scope="module")
def bert_cls(tiny_bert_classifier):
    return LLM(tiny_bert_classifier, device="cpu")


@pytest.fixture(scope="module")
def cross(tiny_bert_cross_encoder):
    return LLM(tiny_bert_cross_encoder, device="cpu")


@pytest.fixture(scope="module")
def llama_cls(tiny_llama_classifier):
    return LLM(tiny_llama_classifier, device="cpu")


def _hf_cls_embeddings(path, texts):
    from transformers import BertModel
    model, tok = _hf(BertModel, path), _tok(path)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state[:, 0]                         # [B, h]


def test_embed_equals_hf_cls_normalized(bert, tiny_bert):
    outs = bert.embed(TEXTS, use_tqdm=False)
    assert all(isinstance(o, EmbeddingRequestOutput) and o.finished for o in outs)
    ours = torch.tensor([o.outputs.embedding for o in outs])
    ref = _hf_cls_embeddings(tiny_bert, TEXTS)
    torch.testing.assert_close(ours, F.normalize(ref, dim=-1), atol=1e-5, rtol=0)
    raw = bert.embed(TEXTS, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.embedding for o in raw]), ref,
                               atol=1e-5, rtol=1e-5)
    assert outs[0].prompt_token_ids == _tok(tiny_bert)(TEXTS[0]).input_ids
    assert "EmbeddingOutput(hidden_size=48)" in repr(outs[0])
    assert "num_cached_tokens=0" in repr(outs[0])


def test_encode_needs_task_and_returns_tensors(bert):
    with pytest.raises(ValueError, match="pooling_task required"):
        bert.encode(TEXTS)
    with pytest.raises(ValueError, match="Classification API is not supported"):
        bert.encode(TEXTS, pooling_task="classify")
    with pytest.raises(ValueError, match="Classification API is not supported"):
        bert.classify(TEXTS)
    outs = bert.encode(TEXTS[:2], pooling_task="embed", use_tqdm=False)
    assert type(outs[0]) is PoolingRequestOutput
    assert outs[0].outputs.data.shape == (48,)
    emb = bert.embed(TEXTS[:2], use_tqdm=False)
    assert outs[1].outputs.data.tolist() == emb[1].outputs.embedding
    with pytest.raises(ValueError, match="cannot overwrite"):
        bert.embed("a", pooling_params=PoolingParams(task="classify"))


def test_pooling_params_rules(bert):
    with pytest.raises(ValueError, match="does not support matryoshka"):
        bert.embed("a", pooling_params=PoolingParams(dimensions=8))
    with pytest.raises(ValueError, match="step_tag_id"):
        bert.embed("a", pooling_params=PoolingParams(step_tag_id=3))
    with pytest.raises(ValueError, match="output_kind has to be FINAL_ONLY"):
        PoolingParams(output_kind="DELTA")
    with pytest.raises(ValueError, match="Unknown pooling task"):
        PoolingParams(task="generate")
    p = PoolingParams(use_activation=False)
    p.task = "classify"
    assert p.clone() == p and p.clone() is not p
    assert "use_activation=False" in repr(p)
    with pytest.raises(ValueError, match="logit_sigma cannot be 0"):
        PoolerConfig(logit_sigma=0)
    assert PoolerConfig(pooling_type="MEAN").seq_pooling_type == "MEAN"
    with pytest.raises(NotImplementedError, match="tok_pooling_type"):
        PoolerConfig(pooling_type="ALL")


def test_matryoshka_dimensions(tmp_path):
    from tests.tiny_models import make_tiny_bert
    path = make_tiny_bert(tmp_path, "model", is_matryoshka=True)
    llm = LLM(path, device="cpu")
    cut = llm.embed(TEXTS[:2], pooling_params=PoolingParams(dimensions=16), use_tqdm=False)
    ref = _hf_cls_embeddings(path, TEXTS[:2])
    torch.testing.assert_close(torch.tensor([o.outputs.embedding for o in cut]),
                               F.normalize(ref[:, :16], dim=-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="less than or equal to the model's embedding size"):
        llm.embed("a", pooling_params=PoolingParams(dimensions=49))


def test_classify_equals_hf_softmax(bert_cls, tiny_bert_classifier):
    from transformers import BertForSequenceClassification
    model, tok = _hf(BertForSequenceClassification, tiny_bert_classifier), \
        _tok(tiny_bert_classifier)
    with torch.no_grad():
        logits = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits   # [B, 3]
    outs = bert_cls.classify(TEXTS, use_tqdm=False)
    assert all(isinstance(o, ClassificationRequestOutput) for o in outs)
    assert outs[0].outputs.num_classes == 3
    probs = torch.tensor([o.outputs.probs for o in outs])
    torch.testing.assert_close(probs, logits.softmax(-1), atol=1e-5, rtol=0)
    raw = bert_cls.classify(TEXTS, pooling_params=PoolingParams(use_activation=False),
                            use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.probs for o in raw]), logits,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="only enabled for num_labels == 1"):
        bert_cls.score("a", "b")
    with pytest.raises(ValueError, match="Embedding API is not supported"):
        bert_cls.embed("a")


def test_cross_encoder_score_equals_hf(cross, tiny_bert_cross_encoder):
    from transformers import BertForSequenceClassification
    path = tiny_bert_cross_encoder
    model, tok = _hf(BertForSequenceClassification, path), _tok(path)
    query, docs = "Where is Paris?", TEXTS
    with torch.no_grad():
        batch = tok([query] * len(docs), docs, padding=True, return_tensors="pt")
        ref = torch.sigmoid(model(**batch).logits[:, 0])                       # [N]
    outs = cross.score(query, docs, use_tqdm=False)                            # 1 -> N
    assert all(isinstance(o, ScoringRequestOutput) for o in outs)
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in outs]), ref,
                               atol=1e-5, rtol=0)
    assert outs[1].prompt_token_ids == tok(query, docs[1]).input_ids
    nn = cross.score([query, query], docs[:2], use_tqdm=False)                 # N -> N
    assert [o.outputs.score for o in nn] == pytest.approx(ref[:2].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="1:1, 1:N or N:N"):
        cross.score([query, query], docs[:3])


def test_bi_encoder_score_is_cosine(bert, tiny_bert):
    outs = bert.score(TEXTS[0], TEXTS[1:], use_tqdm=False)
    ref = _hf_cls_embeddings(tiny_bert, TEXTS)
    want = F.cosine_similarity(ref[:1], ref[1:], dim=-1)
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in outs]), want,
                               atol=1e-5, rtol=0)
    assert outs[0].request_id.count("_") == 1


def test_llama_classifier_reward_equals_hf(llama_cls, tiny_llama_classifier):
    from transformers import LlamaForSequenceClassification
    path = tiny_llama_classifier
    model, tok = _hf(LlamaForSequenceClassification, path), _tok(path)
    with torch.no_grad():       # one prompt at a time: HF pools the last non-pad token
        ref = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in TEXTS])  # [B, 1]
    rewards = llama_cls.reward(TEXTS, use_tqdm=False)
    got = torch.stack([o.outputs.data for o in rewards])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    probs = llama_cls.classify(TEXTS, use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.probs for o in probs]),
                               torch.sigmoid(ref), atol=1e-5, rtol=1e-4)


def test_generative_refuses_pooling(tiny_llama):
    llm = LLM(tiny_llama, device="cpu", max_model_len=64)
    for call in (lambda: llm.embed("a"), lambda: llm.classify("a"),
                 lambda: llm.score("a", "b"), lambda: llm.reward("a"),
                 lambda: llm.encode("a", pooling_task="embed")):
        with pytest.raises(ValueError, match="only supported for pooling models"):
            call()


def test_prompt_forms_tokenization_kwargs_and_tqdm(bert, tiny_bert):
    tok = _tok(tiny_bert)
    ids = tok(TEXTS[1]).input_ids
    a, b, c = bert.embed([TEXTS[1], {"prompt": TEXTS[1]}, {"prompt_token_ids": ids}],
                         use_tqdm=False)
    assert a.outputs.embedding == b.outputs.embedding
    torch.testing.assert_close(torch.tensor(a.outputs.embedding),
                               torch.tensor(c.outputs.embedding))
    [d] = bert.embed(ids, use_tqdm=False)                 # a bare list of ids is one prompt
    assert d.prompt_token_ids == ids
    [cut] = bert.embed(TEXTS[1], use_tqdm=False,
                       tokenization_kwargs={"truncation": True, "max_length": 4})
    assert cut.prompt_token_ids == tok(TEXTS[1], truncation=True, max_length=4).input_ids
    bars = []

    def make_bar(**kw):
        from tqdm import tqdm
        bars.append(kw["total"])
        return tqdm(disable=True, **kw)

    bert.embed(TEXTS, use_tqdm=make_bar)
    assert bars == [len(TEXTS)]


def test_classifier_activation_follows_config():
    from types import SimpleNamespace as NS

    from runner.engine.pooling import classifier_activation
    x = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(classifier_activation(NS(num_labels=3))(x), x.softmax(-1))
    torch.testing.assert_close(classifier_activation(NS(num_labels=1))(x), torch.sigmoid(x))
    torch.testing.assert_close(classifier_activation(
        NS(num_labels=3, problem_type="multi_label_classification"))(x), torch.sigmoid(x))
    assert classifier_activation(NS(num_labels=1, problem_type="regression"))(x) is x
    ident = classifier_activation(NS(num_labels=1, sentence_transformers={
        "activation_fn": "torch.nn.modules.linear.Identity"}))
    torch.testing.assert_close(ident(x), x)
    with pytest.raises(ValueError, match="restricted to torch.nn.modules"):
        classifier_activation(NS(num_labels=1, sentence_transformers={"activation_fn": "os.system"}))


def test_pooler_config_overrides_the_folder(tiny_bert, tiny_bert_classifier, tiny_llama):
    from transformers import BertForSequenceClassification, BertModel
    tok = _tok(tiny_bert)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = _hf(BertModel, tiny_bert)(**batch).last_hidden_state          # [B, T, h]
    mask = batch.attention_mask.unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    llm = LLM(tiny_bert, device="cpu",
              pooler_config=PoolerConfig(pooling_type="MEAN", use_activation=False))
    got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, use_tqdm=False)])
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=1e-5)
    # Platt scaling of classifier logits: activation((logit - mean) / sigma)
    cls = LLM(tiny_bert_classifier, device="cpu",
              pooler_config={"logit_mean": 0.5, "logit_sigma": 2.0})
    with torch.no_grad():
        logits = _hf(BertForSequenceClassification, tiny_bert_classifier)(
            **_tok(tiny_bert_classifier)(TEXTS, padding=True, return_tensors="pt")).logits
    probs = torch.tensor([o.outputs.probs for o in cls.classify(TEXTS, use_tqdm=False)])
    torch.testing.assert_close(probs, ((logits - 0.5) / 2.0).softmax(-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pooler_config is for pooling models"):
        LLM(tiny_llama, device="cpu", max_model_len=64, pooler_config={"pooling_type": "LAST"})
    with pytest.raises(ValueError, match="unknown keys"):
        LLM(tiny_bert, device="cpu", pooler_config={"normalize": True})
