"""Worker-side methods that LLM.collective_rpc reaches by name (vLLM 0.24's worker API):
get_model, apply_model, reload_weights. Worker and PoolingRunner take them from here, so the
two kinds of worker answer the same calls.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class WorkerRPCMixin:
    """Needs `self.model_config` and `get_model()`."""

    def apply_model(self, fn: Callable[[torch.nn.Module], Any]) -> Any:
        return fn(self.get_model())

    def reload_weights(self) -> None:
        """Read the checkpoint into the model again (after sleep(level=2) and
        wake_up(tags=["weights"]))."""
        from runner.engine.model_loader import (_load_checkpoint, get_model_class,
                                                process_weights_after_loading)
        mc = self.model_config
        if mc.quantization is not None or mc.load_format == "dummy":
            raise NotImplementedError("reload_weights() needs an unquantized checkpoint "
                                      f"(quantization={mc.quantization!r}, "
                                      f"load_format={mc.load_format!r}).")
        model = self.get_model()
        with torch.no_grad():
            _load_checkpoint(model, mc, get_model_class(mc.hf_config))
        for module in model.modules():
            process_weights_after_loading(module)
