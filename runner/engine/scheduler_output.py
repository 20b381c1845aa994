"""The plain data of one step, both ways across the scheduler / model-runner boundary.

    Scheduler.schedule() -> SchedulerOutput -> Executor.execute_model() -> ModelRunnerOutput
                                                       -> Scheduler.update_from_output()

No live Sequence crosses: a scheduled sequence is its id, the input ids of the positions it
computes, its block table (an immutable snapshot) and, when its chunk reaches its end, what its
sample needs (SampleSpec). The model runner keeps no request state but the random generators of seeded
requests and the device copy of the last step it sampled without reading back (async
scheduling: an input id of PLACEHOLDER_TOKEN_ID is that step's token for the same sequence).
Everything here is read-only once built; lists such as `prompt_token_ids` are the request's own
and never mutated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.sampling_params import SamplingParams

# an input id whose token the step `placeholder_step` sampled and has not read back
PLACEHOLDER_TOKEN_ID = -1


@dataclass(slots=True)  # one per row per step: slots keep creation cheap
class SampledToken:
    """The token drawn for one row, with raw (pre-processing) log-probabilities."""

    token_id: int
    logprob: float
    rank: int  # 1-based rank of token_id under the raw distribution
    top_logprobs: Optional[list[tuple[int, float]]]  # best first; None unless logprobs asked


@dataclass(slots=True)
class BeamSpec:
    """A beam's row: its best candidates by log-probability (HF's beam scores)."""
    temperature: float
    num_candidates: int
    masked_ids: tuple[int, ...]      # EOS / stop ids, -inf while fewer than min_tokens are out
    # LLM.beam_search at temperature > 0 (vLLM's): one token drawn at this temperature joins
    # the candidates, as vLLM's sampled token joins its top-logprobs dict
    sample_temperature: float = 0.0


class BeamCandidates(tuple):
    """(ids, raw logprobs) of a beam's candidates, best first; `sampled` is the token drawn at
    the sample temperature (None without one), `extra_rank` its raw rank when it was not among
    the best and was appended last."""

    sampled: Optional[int] = None
    extra_rank: Optional[int] = None


@dataclass(slots=True)
class SampleSpec:
    """What the sample of one sequence's last logits row needs."""
    params: SamplingParams
    indices: tuple[int, ...]         # output indices drawing from this row (n at a fork)
    prompt_token_ids: list[int]      # (the repetition penalty reads them)
    history: Optional[list[int]] = None   # output tokens so far, when a rule reads them
    beam: Optional[BeamSpec] = None
    # structured outputs: [W] int32 packed mask of the tokens allowed next (bit j of word w:
    # token 32 w + j), None when unconstrained
    grammar_bitmask: Optional[np.ndarray] = None


@dataclass(slots=True)
class PromptLogprobSpec:
    """Logits rows at positions first, first+1, ...: row j scores targets[j] with top-k."""
    first: int
    targets: list[int]
    k: int


@dataclass(slots=True)
class ScheduledSeq:
    seq_id: int
    request_id: str
    start: int                       # this step computes positions [start, start + len)
    token_ids: list[int]             # their input ids
    block_table: np.ndarray          # [num blocks] int32, read-only
    placeholder_step: int = -1       # >= 0: its last input id is that step's unread sample
    sample: Optional[SampleSpec] = None
    prompt_logprobs: Optional[PromptLogprobSpec] = None
    lora_int_id: int = 0             # its LoRA adapter (SchedulerOutput.lora_requests); 0: none

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class SchedulerOutput:
    step_id: int = 0
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)     # (src, dst)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)   # (cpu, gpu)
    finished_req_ids: list[str] = field(default_factory=list)   # forget their generators
    # the step's samples stay on the device until the next step is launched
    async_sample: bool = False
    # the LoRA adapters the step's sequences use, by lora_int_id (at most max_loras)
    lora_requests: dict = field(default_factory=dict)

    @property
    def num_batched_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled and not self.blocks_to_swap_out


@dataclass
class ModelRunnerOutput:
    """A step's results by sequence id."""
    sampled: dict[int, list[SampledToken]] = field(default_factory=dict)   # n at a fork
    prompt_logprobs: dict[int, PromptLogprobChunk] = field(default_factory=dict)
    beam_candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
