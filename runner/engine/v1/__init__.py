"""vLLM 0.24's `vllm.v1` module path (only what user scripts import: metrics.reader)."""
