"""ProfilerConfig (vLLM 0.24's `profiler_config` engine argument) and the torch profiler that
LLM.start_profile / stop_profile drive.

    LLM(..., profiler_config={"profiler": "torch", "torch_profiler_dir": DIR})
      -> EngineArgs.create_configs -> ProfilerConfig (validated: a dir needs profiler='torch')
    start_profile(prefix) -> torch.profiler.profile(CPU [+ CUDA]) started in this process
    stop_profile()        -> stopped; the trace goes to DIR through
                             torch.profiler.tensorboard_trace_handler, named
                             "<prefix>_dp0_pp0_tp0_rank0" (or without the prefix), gzipped
                             when torch_profiler_use_gzip

Without a profiler configured start_profile raises RuntimeError, as 0.24's worker does; 0.24
reads no VLLM_TORCH_PROFILER_DIR variable any more, so neither do we. Options that need the
engine's step hooks (delay/max/warmup/wait iterations) raise instead of being ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from runner.engine.utils.dataclass_args import dataclass_from_arg

_NOT_ENABLED = ("Profiling is not enabled. Please set --profiler-config to enable profiling. "
                "Example: '--profiler-config.profiler=torch --profiler-config.torch_profiler_dir"
                "=YOUR_DIR_PATH_TO_DUMP_TRACE' (in Python: LLM(..., profiler_config="
                "{'profiler': 'torch', 'torch_profiler_dir': DIR}))")


@dataclass
class ProfilerConfig:
    profiler: Optional[str] = None            # 'torch' ('cuda' is not supported here)
    torch_profiler_dir: str = ""
    torch_profiler_with_stack: bool = True
    torch_profiler_with_flops: bool = False
    torch_profiler_use_gzip: bool = True
    torch_profiler_dump_cuda_time_total: bool = True
    torch_profiler_record_shapes: bool = False
    torch_profiler_with_memory: bool = False
    ignore_frontend: bool = False
    delay_iterations: int = 0
    max_iterations: int = 0
    warmup_iterations: int = 0
    active_iterations: int = 5
    wait_iterations: int = 0

    def __post_init__(self) -> None:
        if self.profiler not in (None, "torch", "cuda"):
            raise ValueError(f"profiler must be None, 'torch' or 'cuda', got {self.profiler!r}.")
        if self.profiler == "cuda":
            raise NotImplementedError("profiler='cuda' (nsys ranges) is not supported; use "
                                      "profiler='torch'.")
        for name in ("delay_iterations", "max_iterations", "warmup_iterations",
                     "wait_iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
            if getattr(self, name):
                raise NotImplementedError(f"profiler_config.{name} is not supported (the "
                                          "profiler records from start_profile to stop_profile)"
                                          "; leave it 0.")
        if self.active_iterations < 1:
            raise ValueError(f"active_iterations must be >= 1, got {self.active_iterations}.")
        if self.torch_profiler_dir and self.profiler != "torch":
            raise ValueError("torch_profiler_dir is only applicable when profiler is set to "
                             "'torch'")
        if self.profiler == "torch" and not self.torch_profiler_dir:
            raise ValueError("torch_profiler_dir must be set when profiler is 'torch'")
        if self.torch_profiler_dir and "://" not in self.torch_profiler_dir:
            self.torch_profiler_dir = os.path.abspath(os.path.expanduser(
                self.torch_profiler_dir))

    @classmethod
    def from_arg(cls, value) -> Optional["ProfilerConfig"]:
        return dataclass_from_arg(cls, value, "profiler_config")


class TorchProfiler:
    """One torch profiler session per start_profile/stop_profile pair."""

    def __init__(self, config: Optional[ProfilerConfig], device: torch.device):
        self.config, self.device = config, device
        self.profiler: Optional[torch.profiler.profile] = None

    def start(self, profile_prefix: Optional[str] = None, rank: int = 0) -> None:
        cfg = self.config
        if cfg is None or cfg.profiler is None:
            raise RuntimeError(_NOT_ENABLED)
        if self.profiler is not None:
            raise RuntimeError("the profiler is running already; call stop_profile() first.")
        suffix = f"dp0_pp0_tp{rank}_rank{rank}"
        name = f"{profile_prefix}_{suffix}" if profile_prefix else suffix
        os.makedirs(cfg.torch_profiler_dir, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities, record_shapes=cfg.torch_profiler_record_shapes,
            profile_memory=cfg.torch_profiler_with_memory,
            with_stack=cfg.torch_profiler_with_stack, with_flops=cfg.torch_profiler_with_flops,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(
                cfg.torch_profiler_dir, worker_name=name, use_gzip=cfg.torch_profiler_use_gzip))
        self.profiler.start()

    def stop(self) -> None:
        if self.config is None or self.config.profiler is None:
            raise RuntimeError(_NOT_ENABLED)
        if self.profiler is None:
            raise RuntimeError("stop_profile() without start_profile().")
        prof, self.profiler = self.profiler, None
        prof.stop()          # on_trace_ready writes the trace
