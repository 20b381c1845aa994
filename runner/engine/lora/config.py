"""LoRAConfig: the engine's LoRA limits, resolved from EngineArgs (vLLM's LoRAConfig names).

    EngineArgs(enable_lora=True, max_loras=1, max_lora_rank=16, max_cpu_loras=None)
      -> LoRAConfig(max_lora_rank, max_loras, max_cpu_loras)   (None when enable_lora=False)

max_loras: adapters in one step, and the number of device slots the model runner keeps (the
scheduler admits no request whose adapter would make a step hold more). max_lora_rank: the
slots' rank; an adapter of a higher rank is refused. max_cpu_loras (None: max_loras): adapters
kept loaded in host memory, least recently used evicted beyond it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# vLLM's MaxLoRARanks
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class LoRAConfig:
    max_lora_rank: int = 16
    max_loras: int = 1
    max_cpu_loras: int = 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_lora_config(enable_lora: bool, max_loras, max_lora_rank,
                        max_cpu_loras) -> Optional[LoRAConfig]:
    """Validate the four EngineArgs; None when LoRA is off."""
    if not isinstance(enable_lora, bool):
        raise ValueError(f"enable_lora must be True or False, got {enable_lora!r}.")
    if not _is_int(max_loras) or max_loras < 1:
        raise ValueError(f"max_loras must be an integer >= 1, got {max_loras!r}.")
    if max_lora_rank not in MAX_LORA_RANKS or not _is_int(max_lora_rank):
        raise ValueError(f"max_lora_rank must be one of {list(MAX_LORA_RANKS)}, got "
                         f"{max_lora_rank!r}.")
    if max_cpu_loras is not None and (not _is_int(max_cpu_loras) or max_cpu_loras < max_loras):
        raise ValueError(f"max_cpu_loras ({max_cpu_loras!r}) must be an integer >= max_loras "
                         f"({max_loras}), or None (= max_loras).")
    if not enable_lora:
        return None
    return LoRAConfig(max_lora_rank=max_lora_rank, max_loras=max_loras,
                      max_cpu_loras=max_loras if max_cpu_loras is None else max_cpu_loras)
