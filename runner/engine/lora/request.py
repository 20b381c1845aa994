"""LoRARequest: which LoRA adapter a request runs with (vLLM's `vllm.lora.request`).

    from runner.engine.lora.request import LoRARequest
    llm.generate(prompts, params, lora_request=LoRARequest("sql", 1, "/path/to/adapter"))

The fields are vLLM 0.24's, in its order: `lora_name`, `lora_int_id` (>= 1, unique per
adapter; the engine keys its adapter caches by it), `lora_path` (a PEFT adapter folder:
adapter_config.json + adapter_model.safetensors). Two requests are equal when their names are,
as in vLLM. Fields this engine does not use (tensorizer_config_dict, is_3d_lora_weight) fail
loudly when set; `load_inplace=True` reloads the adapter from its folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(eq=False)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: Optional[str] = None
    tensorizer_config_dict: Optional[dict] = None
    load_inplace: bool = False
    is_3d_lora_weight: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int) \
                or self.lora_int_id < 1:
            raise ValueError(f"LoRARequest lora_int_id must be an integer > 0, got "
                             f"{self.lora_int_id!r}.")
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise ValueError(f"LoRARequest lora_name must be a non-empty string, got "
                             f"{self.lora_name!r}.")
        if not self.lora_path:
            raise ValueError(f"LoRARequest {self.lora_name!r}: lora_path is empty; give the "
                             "adapter's folder (adapter_config.json + adapter_model.safetensors).")
        if self.tensorizer_config_dict is not None:
            raise NotImplementedError(
                "LoRARequest(tensorizer_config_dict=...) is not supported; give a PEFT folder "
                "as lora_path.")
        if self.is_3d_lora_weight:
            raise NotImplementedError("LoRARequest(is_3d_lora_weight=True) is for MoE models, "
                                      "which this engine does not have; leave it False.")

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)
