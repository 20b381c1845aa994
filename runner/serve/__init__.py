"""runner.serve: the engine behind an OpenAI-compatible HTTP API (`python -m runner.serve`).

    python -m runner.serve model=llama2_13b engine.tensor_parallel_size=2 serve.port=5002 \
        serve.gpus=0,1

    __main__.py        the Hydra edge: conf/serve.yaml -> ServeRunConfig -> LLM -> uvicorn
    config.py          the structured config (serve node + the runner's model/engine/sampling)
    server.py          LLM -> uvicorn server; the SIGTERM grace period
    api_server.py      the Starlette app: routes, middleware (auth, request ids), errors
    serving.py         /v1/completions, /v1/chat/completions, /v1/embeddings
    serving_tokens.py  /tokenize, /detokenize, /tokenizer_info
    state.py           what every handler reads; read_request (limits + the field tables)
    limits.py          body size, JSON depth, strict JSON, before any parsing work
    schema.py          field specs: one declaration read by the validator and /openapi.json
    request_fields.py  the request fields of every endpoint, with types and bounds
    openapi.py         /openapi.json from the field tables and the response shapes
    protocol.py        validated request -> prompts + SamplingParams
    prompts.py         tokenization in its own thread, prompt length limits
    chat_render.py     chat templates off the event loop (a client's in a limited child)
    responses.py       RequestOutput -> OpenAI / vLLM JSON (echo, logprobs, streams)
    async_engine.py    one thread owns the LLMEngine; asyncio handlers queue requests into it
    errors.py          OpenAI's error body
    metrics.py         Prometheus text for /metrics

See docs/serve.md.
"""
from runner.serve.api_server import build_app
from runner.serve.async_engine import AsyncLLMEngine, EngineShutdownError
from runner.serve.server import make_server, serve

__all__ = ["AsyncLLMEngine", "EngineShutdownError", "build_app", "make_server", "serve"]
