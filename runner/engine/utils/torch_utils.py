"""Process-wide torch helpers, at vLLM's path (vllm.utils.torch_utils).

`set_random_seed(seed)` seeds Python's `random`, numpy's and torch's global generators (every
CUDA device's too) as vLLM's workers do at start-up and again after warm-up, so the engine's
construction leaves the process's random state as `seed` sets it. The engine's own sampling
draws from its generators (runner/engine/model_runner.py), not from these; a seed of None
leaves the global state alone, as in vLLM.
"""
from __future__ import annotations

import random
from typing import Optional

import torch


def set_random_seed(seed: Optional[int]) -> None:
    if seed is None:
        return
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:       # numpy is optional for the engine
        np = None
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)   # seeds every CUDA device as well
