"""Kernel test setup: without CUDA, Triton kernels run in its CPU interpreter.

TRITON_INTERPRET is read when a @triton.jit function is decorated, so it must be set before the
kernels package is imported. If another test package imported `kernels` earlier in the same
session (collected before this directory), those modules were decorated for a GPU; they are
reloaded here so the tests below get interpreter-backed kernels.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in sorted(n for n in sys.modules if n == "kernels" or n.startswith("kernels.")):
        # submodules first ("kernels" sorts first; reload it last so its exports are fresh)
        if _name != "kernels":
            importlib.reload(sys.modules[_name])
    if "kernels" in sys.modules:
        importlib.reload(sys.modules["kernels"])
