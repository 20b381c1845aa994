"""Tiny random models for CPU tests: a BPE tokenizer trained here and HF configs saved locally.

Nothing is fetched from a hub. `make_tiny_model(dir, arch)` writes a folder that both HF
transformers and runner.engine load: config.json, weights (safetensors or .bin), tokenizer files
with a ChatML chat template. The weights are random but peaked (larger init range) so that greedy
decoding has no near-ties and token-for-token comparisons are meaningful.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "A paged KV cache stores keys and values in fixed-size blocks.",
    "Continuous batching schedules new requests while others decode.",
    "The river flows north through the green valley to the cold sea.",
    "Question: who wrote the book? Answer: the old sailor wrote it in 1901.",
    "Numbers like 12, 345 and 6789 appear in many passages about history.",
    "Hello world! How are you today? I am fine, thank you very much.",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return tok.to_str()


def make_tokenizer(vocab_size: int = 384):
    """A PreTrainedTokenizerFast with bos <s>=1, eos </s>=2 and a ChatML chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(arch: str, vocab_size: int, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
        pad_token_id=2, tie_word_embeddings=False,
    )
    if arch == "llama":
        cfg = LlamaConfig(**{**common, "rope_theta": 10000.0, **overrides})
    elif arch == "llama_gqa":  # Llama-3 style: GQA and llama3 rope scaling
        cfg = LlamaConfig(**{**common, "num_key_value_heads": 2, "rope_theta": 500000.0,
                             "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 64},
                             **overrides})
    elif arch == "qwen2":  # q/k/v bias, tied embeddings
        cfg = Qwen2Config(**{**common, "num_key_value_heads": 2, "tie_word_embeddings": True,
                             "rope_theta": 1000000.0, **overrides})
    elif arch == "qwen3":  # per-head q/k norm, head_dim 32 != hidden / heads, tied embeddings
        cfg = Qwen3Config(**{**common, "num_key_value_heads": 2, "head_dim": 32,
                             "tie_word_embeddings": True, "rope_theta": 1000000.0,
                             **overrides})
    elif arch == "mistral":
        cfg = MistralConfig(**{**common, "num_key_value_heads": 2, "sliding_window": None,
                               **overrides})
    else:
        raise ValueError(f"unknown tiny arch {arch!r}")
    return cfg


def make_tiny_model(path, arch: str = "llama", *, safetensors: bool = True, seed: int = 0,
                    vocab_size: int = 384, **overrides) -> str:
    """Save a tiny random `arch` model with tokenizer into `path`; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = _config(arch, vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(path)
    if not safetensors:   # transformers 5 always writes safetensors: convert to a .bin checkpoint
        from safetensors.torch import load_file
        st = path / "model.safetensors"
        torch.save(load_file(st), path / "pytorch_model.bin")
        st.unlink()
    make_tokenizer(vocab_size).save_pretrained(path)
    return os.fspath(path)


def make_bert_tokenizer(path):
    """A BertTokenizerFast (WordPiece vocab of the corpus' words and characters): [CLS] a [SEP]
    for one text, [CLS] a [SEP] b [SEP] with token_type_ids for a pair."""
    import re

    from transformers import BertTokenizerFast

    words = sorted({w for line in _CORPUS for w in re.findall(r"\w+|[^\w\s]", line.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + \
        [c for c in chars if c not in words] + [f"##{c}" for c in chars]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    tok.save_pretrained(path)
    return tok


def make_tiny_bert(path, head: str = "model", *, num_labels: int = 2, seed: int = 0,
                   **overrides) -> str:
    """A tiny random BERT with its tokenizer: head 'model' (BertModel, embeddings) or 'seq_cls'
    (BertForSequenceClassification with num_labels; 1 label: a cross-encoder)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    path = Path(path)
    tok = make_bert_tokenizer(path)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2,
                     num_attention_heads=3, intermediate_size=96, max_position_embeddings=128,
                     initializer_range=0.2, num_labels=num_labels, **overrides)
    torch.manual_seed(seed)
    model = BertModel(cfg) if head == "model" else BertForSequenceClassification(cfg)
    model.eval().save_pretrained(path)
    return os.fspath(path)


def make_tiny_llama_classifier(path, *, num_labels: int = 1, seed: int = 0) -> str:
    """A tiny random LlamaForSequenceClassification (a reward model / cross-encoder with one
    label) with the BPE tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = _config("llama", 384, num_labels=num_labels)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(cfg).eval().save_pretrained(path)
    make_tokenizer(384).save_pretrained(path)
    return os.fspath(path)
