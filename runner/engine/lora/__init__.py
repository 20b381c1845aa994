"""LoRA adapters for the engine (vLLM's `vllm.lora`): LoRARequest (request.py), the limits
(config.py), PEFT folder loading (adapter.py), the wrapped layers (layers.py), a step's token
segments (batch.py) and the model runner's LoRAManager (manager.py)."""
from runner.engine.lora.request import LoRARequest

__all__ = ["LoRARequest"]
