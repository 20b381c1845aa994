"""Model registry: HF `architectures` names -> the engine's model classes."""
from __future__ import annotations

from runner.engine.models.llama import LlamaForCausalLM

_MODELS = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(hf_config):
    archs = getattr(hf_config, "architectures", None) or []
    for arch in archs:
        if arch in _MODELS:
            return _MODELS[arch]
    raise ValueError(f"model architecture {archs or '<none in config.json>'} is not supported; "
                     f"supported architectures: {', '.join(supported_architectures())}.")
