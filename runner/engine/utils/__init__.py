"""runner.engine.utils: helpers at vLLM's public paths (vllm.utils.argparse_utils ->
runner.engine.utils.argparse_utils, vllm.utils.torch_utils -> runner.engine.utils.torch_utils)."""
