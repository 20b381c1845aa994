"""Output objects of pooling models, with vLLM 0.24's names, fields and reprs.

    PoolingRunner -> PoolingRequestOutput(request_id, outputs=PoolingOutput(data: tensor),
                                          prompt_token_ids, num_cached_tokens, finished)
      -> LLM.encode returns those as they are
      -> LLM.embed / classify / score convert each with from_base() into
         EmbeddingRequestOutput / ClassificationRequestOutput / ScoringRequestOutput
         (EmbeddingOutput.embedding, ClassificationOutput.probs, ScoringOutput.score)

PoolingOutput holds a CPU tensor (as vLLM's); the typed outputs hold plain Python lists/floats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch


@dataclass
class PoolingOutput:
    """The pooled data of one prompt (a CPU tensor: [hidden], [num_labels] or a scalar)."""

    data: torch.Tensor

    def __repr__(self) -> str:
        return f"PoolingOutput(data={self.data})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.__class__) and bool((self.data == other.data).all())


_O = TypeVar("_O")


class PoolingRequestOutput(Generic[_O]):
    """What a pooling model produced for one prompt."""

    def __init__(self, request_id: str, outputs: _O, prompt_token_ids: list[int],
                 num_cached_tokens: int, finished: bool):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.num_cached_tokens = num_cached_tokens
        self.finished = finished
        self.outputs = outputs

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(request_id={self.request_id!r}, "
                f"outputs={self.outputs!r}, prompt_token_ids={self.prompt_token_ids}, "
                f"num_cached_tokens={self.num_cached_tokens}, finished={self.finished})")


def _one_dim(data: torch.Tensor, what: str) -> list[float]:
    if data.ndim != 1:
        raise ValueError(f"pooled_data should be a 1-D {what} vector")
    return data.tolist()


@dataclass
class EmbeddingOutput:
    """The embedding vector of one prompt."""

    embedding: list[float]

    @staticmethod
    def from_base(pooling_output: PoolingOutput) -> "EmbeddingOutput":
        return EmbeddingOutput(_one_dim(pooling_output.data, "embedding"))

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)

    def __repr__(self) -> str:
        return f"EmbeddingOutput(hidden_size={self.hidden_size})"


@dataclass
class ClassificationOutput:
    """The class probabilities (or raw logits with use_activation=False) of one prompt."""

    probs: list[float]

    @staticmethod
    def from_base(pooling_output: PoolingOutput) -> "ClassificationOutput":
        return ClassificationOutput(_one_dim(pooling_output.data, "probability"))

    @property
    def num_classes(self) -> int:
        return len(self.probs)

    def __repr__(self) -> str:
        return f"ClassificationOutput(num_classes={self.num_classes})"


@dataclass
class ScoringOutput:
    """The similarity score of one pair."""

    score: float

    @staticmethod
    def from_base(pooling_output: PoolingOutput) -> "ScoringOutput":
        data = pooling_output.data.squeeze()
        if data.ndim != 0:
            raise ValueError("pooled_data should be a scalar score")
        return ScoringOutput(data.item())

    def __repr__(self) -> str:
        return f"ScoringOutput(score={self.score})"


def _typed(cls, out_cls):
    def from_base(request_output: PoolingRequestOutput):
        return cls(request_id=request_output.request_id,
                   outputs=out_cls.from_base(request_output.outputs),
                   prompt_token_ids=request_output.prompt_token_ids,
                   num_cached_tokens=request_output.num_cached_tokens,
                   finished=request_output.finished)
    return staticmethod(from_base)


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    pass


class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    pass


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    pass


EmbeddingRequestOutput.from_base = _typed(EmbeddingRequestOutput, EmbeddingOutput)
ClassificationRequestOutput.from_base = _typed(ClassificationRequestOutput, ClassificationOutput)
ScoringRequestOutput.from_base = _typed(ScoringRequestOutput, ScoringOutput)
