"""vLLM 0.24's `vllm.v1.metrics` path: see reader.py."""
