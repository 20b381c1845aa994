"""runner.serve: the engine behind an OpenAI-compatible HTTP API (`python -m runner.serve`).

    python -m runner.serve model=llama2_13b engine.tensor_parallel_size=2 serve.port=5002 \
        serve.gpus=0,1

    __main__.py     the Hydra edge: conf/serve.yaml -> ServeRunConfig -> LLM -> uvicorn
    config.py       the structured config (serve node + the runner's model/engine/sampling)
    async_engine.py one thread owns the LLMEngine; asyncio handlers queue requests into it
    api_server.py   the Starlette app: /v1/completions, /v1/chat/completions, /v1/embeddings,
                    /v1/models, /health, /metrics
    protocol.py     OpenAI's request/response JSON <-> SamplingParams / RequestOutput
    metrics.py      Prometheus text for /metrics

See docs/serve.md.
"""
from runner.serve.api_server import build_app
from runner.serve.async_engine import AsyncLLMEngine, EngineShutdownError
from runner.serve.server import make_server, serve

__all__ = ["AsyncLLMEngine", "EngineShutdownError", "build_app", "make_server", "serve"]
