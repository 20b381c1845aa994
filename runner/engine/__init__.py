"""runner.engine: the project's inference engine, with vLLM's offline API.

    from runner.engine import LLM, SamplingParams

Importable without Hydra. See DESIGN.md, "The engine contract".
"""
from runner.engine.config import EngineArgs
from runner.engine.llm import LLM
from runner.engine.llm_engine import LLMEngine
from runner.engine.outputs import (CompletionOutput, Logprob, PoolingParams, RequestMetrics,
                                   RequestOutput)
from runner.engine.sampling_params import BeamSearchParams, SamplingParams, SamplingType

__all__ = ["LLM", "LLMEngine", "EngineArgs", "SamplingParams", "SamplingType",
           "BeamSearchParams", "RequestOutput", "CompletionOutput", "RequestMetrics", "Logprob",
           "PoolingParams"]
