"""Model registry: HF `architectures` names -> the engine's model classes."""
from __future__ import annotations

from runner.engine.models.gpt2 import GPT2LMHeadModel
from runner.engine.models.llama import LlamaForCausalLM
from runner.engine.models.opt import OPTForCausalLM
from runner.engine.models.qwen3 import Qwen3ForCausalLM

_MODELS = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "OPTForCausalLM": OPTForCausalLM,
    "GPT2LMHeadModel": GPT2LMHeadModel,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
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
