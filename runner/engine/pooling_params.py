"""PoolingParams: the per-request parameters of pooling models (vLLM 0.24's
`vllm.pooling_params`), with its fields, defaults and validation.

    LLM.embed / classify / score / encode(pooling_task=...) -> each prompt's PoolingParams gets
      its `task` -> verify(task, model facts): the pooler config's defaults fill what the user
      left None (use_activation, dimensions), parameters the task does not take are refused,
      dimensions is checked against the model's matryoshka support and embedding size
      -> the pooling runner reads use_activation / dimensions per prompt

`use_activation` is the one switch of 0.24: for embeddings it is the L2 normalization, for
classification the softmax (or sigmoid with one label). Fields the engine does not implement
(step pooling, late interaction) raise when set, instead of being ignored.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

# vLLM 0.24's tasks (vllm.tasks.PoolingTask); the ones this engine runs are in POOLING_TASKS
ALL_POOLING_TASKS = ("embed", "classify", "token_embed", "token_classify", "plugin",
                     "embed&token_classify")
POOLING_TASKS = ("embed", "classify")
# task -> the user parameters it takes (PoolingParams.valid_parameters in 0.24)
_VALID_PARAMETERS = {
    "embed": ("dimensions", "use_activation"),
    "classify": ("use_activation",),
    "token_embed": ("dimensions", "use_activation"),
    "token_classify": ("use_activation",),
}


@dataclass
class PoolingModelInfo:
    """The facts about the loaded model that verify() checks against."""
    name: str
    embedding_size: int
    is_matryoshka: bool = False
    matryoshka_dimensions: Optional[list[int]] = None
    default_use_activation: Optional[bool] = None     # the pooler config's use_activation
    default_dimensions: Optional[int] = None          # the pooler config's dimensions


@dataclass
class PoolingParams:
    """API parameters of pooling models (vLLM 0.24's fields and defaults)."""

    use_activation: Optional[bool] = None     # None: the pooler's default (True)
    dimensions: Optional[int] = None          # matryoshka cut of embeddings
    step_tag_id: Optional[int] = None         # step pooling (reward models): not supported
    returned_token_ids: Optional[list[int]] = None
    task: Optional[str] = None                # set by LLM.embed / classify / score / encode
    requires_token_ids: bool = False
    skip_reading_prefix_cache: Optional[bool] = None
    late_interaction_params: Any = None
    extra_kwargs: Optional[dict[str, Any]] = None
    output_kind: Any = None                   # only RequestOutputKind.FINAL_ONLY (or None)

    def __post_init__(self) -> None:
        kind = getattr(self.output_kind, "name", self.output_kind)
        if kind is not None and kind != "FINAL_ONLY":
            raise ValueError(f"For pooling output_kind has to be FINAL_ONLY, got "
                             f"{self.output_kind!r}")
        if self.use_activation is not None and not isinstance(self.use_activation, bool):
            raise ValueError(f"use_activation must be True, False or None, got "
                             f"{self.use_activation!r}.")
        if self.dimensions is not None and (isinstance(self.dimensions, bool)
                                            or not isinstance(self.dimensions, int)):
            raise ValueError(f"dimensions must be an int or None, got {self.dimensions!r}.")
        if self.task is not None and self.task not in ALL_POOLING_TASKS:
            raise ValueError(f"Unknown pooling task: {self.task!r}; one of "
                             f"{list(ALL_POOLING_TASKS)}.")

    @property
    def all_parameters(self) -> list[str]:
        return ["dimensions", "use_activation"]

    @property
    def valid_parameters(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in _VALID_PARAMETERS.items()}

    def clone(self) -> PoolingParams:
        return copy.deepcopy(self)

    def verify(self, model: PoolingModelInfo) -> None:
        """Fill the pooler's defaults and check the parameters against `self.task` and the
        model, as vLLM 0.24 does before a request is queued."""
        if self.task not in POOLING_TASKS:
            raise ValueError(f"pooling task {self.task!r} is not supported by this engine; "
                             f"supported: {list(POOLING_TASKS)}.")
        for name in ("step_tag_id", "returned_token_ids"):
            if getattr(self, name) is not None:
                raise ValueError(f"Task {self.task} only supports "
                                 f"{list(_VALID_PARAMETERS[self.task])} parameters, does not "
                                 f"support {[name]} parameters (step pooling is not "
                                 "supported).")
        if self.late_interaction_params is not None:
            raise ValueError("late_interaction_params is not supported (no late-interaction "
                             "models); leave it None.")
        if self.extra_kwargs:
            raise ValueError(f"extra_kwargs={self.extra_kwargs!r}: no pooler of this engine "
                             "takes extra arguments; leave it None.")
        valid = _VALID_PARAMETERS[self.task]
        if "use_activation" in valid and self.use_activation is None:
            self.use_activation = model.default_use_activation
        if "dimensions" in valid and self.dimensions is None:
            self.dimensions = model.default_dimensions
        if self.use_activation is None:
            self.use_activation = True
        if self.skip_reading_prefix_cache is None:
            self.skip_reading_prefix_cache = False
        if self.task == "embed" and self.dimensions is not None:
            self._verify_dimensions(model)
        invalid = [k for k in self.all_parameters
                   if k not in valid and getattr(self, k) is not None]
        if invalid:
            raise ValueError(f"Task {self.task!r} only supports {list(valid)} parameters, does "
                             f"not support {invalid} parameters")

    def _verify_dimensions(self, model: PoolingModelInfo) -> None:
        if not model.is_matryoshka:
            raise ValueError(f'Model "{model.name}" does not support matryoshka '
                             "representation, changing output dimensions will lead to poor "
                             f"results (dimensions={self.dimensions}).")
        mds = model.matryoshka_dimensions
        if mds is not None:
            if self.dimensions not in mds:
                raise ValueError(f"Model {model.name!r} only supports {mds} matryoshka "
                                 f"dimensions, got dimensions={self.dimensions}.")
        elif self.dimensions < 1:
            raise ValueError(f"Dimensions must be greater than 0, got "
                             f"dimensions={self.dimensions}.")
        elif self.dimensions > model.embedding_size:
            raise ValueError(f"Dimensions must be less than or equal to the model's embedding "
                             f"size ({model.embedding_size}), got dimensions={self.dimensions}.")

    def __repr__(self) -> str:
        return (f"PoolingParams(task={self.task}, dimensions={self.dimensions}, "
                f"use_activation={self.use_activation}, step_tag_id={self.step_tag_id}, "
                f"returned_token_ids={self.returned_token_ids}, "
                f"requires_token_ids={self.requires_token_ids}, "
                f"skip_reading_prefix_cache={self.skip_reading_prefix_cache}, "
                f"late_interaction_params={self.late_interaction_params}, "
                f"extra_kwargs={self.extra_kwargs})")
