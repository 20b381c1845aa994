"""runner.engine.engine: vLLM's `vllm.engine` path (arg_utils: EngineArgs and its command line)."""
