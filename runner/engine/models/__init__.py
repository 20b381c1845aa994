"""The model registry: HF `architectures` names -> the engine's model classes, decoders and
encoders in one table.

    config.json's architectures -> get_model_class -> model_loader.get_model builds it
                                -> is_embedding_model: an encoder goes to the pooling runner
                                   (LLM.encode), a decoder to the generative engine

The Llama relatives share one class (models/llama.py, flags per family); an architecture not
listed here is a ValueError that names the supported ones.
"""
from __future__ import annotations

from runner.engine.models.bert import BertForSequenceClassification, BertModel
from runner.engine.models.gpt2 import GPT2LMHeadModel
from runner.engine.models.llama import LlamaForCausalLM
from runner.engine.models.opt import OPTForCausalLM
from runner.engine.models.seq_cls import LlamaForSequenceClassification

# generative models: paged KV cache, scheduler, sampler
_DECODERS = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "OPTForCausalLM": OPTForCausalLM,
    "GPT2LMHeadModel": GPT2LMHeadModel,
}
# pooling models: no persistent KV cache, each prompt encoded once (runner/engine/pooling.py)
_ENCODERS = {
    "BertModel": BertModel,
    # classification / cross-encoder / reward models (LLM.classify, score): pooling path too
    "BertForSequenceClassification": BertForSequenceClassification,
    "LlamaForSequenceClassification": LlamaForSequenceClassification,
    "MistralForSequenceClassification": LlamaForSequenceClassification,
    "Qwen2ForSequenceClassification": LlamaForSequenceClassification,
    "Qwen3ForSequenceClassification": LlamaForSequenceClassification,
}
_MODELS = {**_DECODERS, **_ENCODERS}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def _architecture(hf_config) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    for arch in archs:
        if arch in _MODELS:
            return arch
    raise ValueError(f"model architecture {archs or '<none in config.json>'} is not supported; "
                     f"supported architectures: {', '.join(supported_architectures())}.")


def get_model_class(hf_config):
    """The class that builds this config's model, decoder or encoder."""
    return _MODELS[_architecture(hf_config)]


def is_embedding_model(hf_config) -> bool:
    """True when the class get_model_class picks is an encoder (embedding model); False for
    decoders and for architectures not supported at all (building those raises)."""
    archs = [a for a in getattr(hf_config, "architectures", None) or [] if a in _MODELS]
    return bool(archs) and archs[0] in _ENCODERS
