"""compilation_config: vLLM's LLM(compilation_config=...) read into what this engine does.

This engine does not run torch.compile; its CUDA graphs capture whole decode steps (vLLM's
cudagraph_mode FULL_DECODE_ONLY: decode-only batches replay a graph, mixed batches run eager).
`resolve_compilation_config` takes an int (vLLM's CompilationMode) or a dict and returns the
decode batch sizes to capture, or raises naming the key or value it cannot honour:

    mode / level                  0 (no torch.compile) only; 1, 2, 3 raise
    cudagraph_capture_sizes       the batch sizes captured (sizes above max_num_seqs dropped)
    max_cudagraph_capture_size    the largest size captured
    cudagraph_mode                NONE (no graphs: as enforce_eager) or FULL_DECODE_ONLY
"""
from __future__ import annotations

import logging
from typing import Any, Optional

logger = logging.getLogger("runner.engine")

SUPPORTED_KEYS = ("mode", "level", "cudagraph_capture_sizes", "max_cudagraph_capture_size",
                  "cudagraph_mode")
CUDAGRAPH_MODES = ("NONE", "FULL_DECODE_ONLY")


def _check_mode(value: Any, key: str) -> None:
    mode = getattr(value, "value", value)        # an IntEnum works as its int
    if isinstance(mode, bool) or not isinstance(mode, int) or mode not in (0, 1, 2, 3):
        raise ValueError(f"compilation_config {key} must be 0, 1, 2 or 3 (vLLM's "
                         f"CompilationMode), got {value!r}.")
    if mode != 0:
        raise NotImplementedError(
            f"compilation_config {key}={mode}: this engine does not run torch.compile; use 0 "
            "(no compilation). Decode steps still run as CUDA graphs (cudagraph_capture_sizes, "
            "cudagraph_mode).")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"compilation_config {what} must be an int >= 1, got {value!r}.")
    return value


def resolve_compilation_config(value: Any, max_num_seqs: int
                               ) -> tuple[Optional[list[int]], bool]:
    """-> (decode batch sizes to capture, or None for the engine's own buckets; whether CUDA
    graphs are off)."""
    if value is None:
        return None, False
    if not isinstance(value, dict):
        _check_mode(value, "mode")      # an int: the mode (vLLM's `-O` level)
        return None, False
    unknown = sorted(set(value) - set(SUPPORTED_KEYS))
    if unknown:
        raise NotImplementedError(
            f"compilation_config keys {unknown} are not supported; this engine honours "
            f"{list(SUPPORTED_KEYS)} (it runs no torch.compile).")
    for key in ("mode", "level"):
        if value.get(key) is not None:
            _check_mode(value[key], key)
    graphs_off = False
    mode = value.get("cudagraph_mode")
    if mode is not None:
        name = getattr(mode, "name", mode)
        if not isinstance(name, str) or name.upper() not in CUDAGRAPH_MODES:
            raise NotImplementedError(
                f"compilation_config cudagraph_mode={mode!r} is not supported; this engine's "
                f"graphs capture whole decode steps: use one of {list(CUDAGRAPH_MODES)}.")
        graphs_off = name.upper() == "NONE"
    sizes = value.get("cudagraph_capture_sizes")
    cap = value.get("max_cudagraph_capture_size")
    if cap is not None:
        cap = _positive_int(cap, "max_cudagraph_capture_size")
    if sizes is None and cap is None:
        return None, graphs_off
    if sizes is None:
        from runner.engine.cuda_graphs import capture_batch_sizes
        sizes = capture_batch_sizes(max_num_seqs)
    elif not isinstance(sizes, (list, tuple)):
        raise ValueError(f"compilation_config cudagraph_capture_sizes must be a list of ints, "
                         f"got {sizes!r}.")
    sizes = sorted({_positive_int(s, "cudagraph_capture_sizes entry") for s in sizes})
    limit = min(max_num_seqs, cap) if cap is not None else max_num_seqs
    kept = [s for s in sizes if s <= limit]
    if len(kept) < len(sizes):
        logger.info("cudagraph_capture_sizes: %s are larger than %d (max_num_seqs or "
                    "max_cudagraph_capture_size) and are not captured",
                    [s for s in sizes if s > limit], limit)
    if not kept:
        logger.info("compilation_config leaves no decode batch size to capture: no CUDA graphs")
        return [], True
    return kept, graphs_off
