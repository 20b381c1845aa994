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
# pooling models' outputs, exported at the top as vllm's are
from runner.engine.pooling_outputs import (ClassificationOutput, ClassificationRequestOutput,
                                           EmbeddingOutput, EmbeddingRequestOutput,
                                           PoolingOutput, PoolingRequestOutput, ScoringOutput,
                                           ScoringRequestOutput)

__all__ = ["LLM", "LLMEngine", "EngineArgs", "SamplingParams", "SamplingType",
           "BeamSearchParams", "RequestOutput", "CompletionOutput", "RequestMetrics", "Logprob",
           "PoolingParams", "PoolingOutput", "PoolingRequestOutput", "EmbeddingOutput",
           "EmbeddingRequestOutput", "ClassificationOutput", "ClassificationRequestOutput",
           "ScoringOutput", "ScoringRequestOutput"]
