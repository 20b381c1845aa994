"""Sequences and requests: the token state the scheduler owns and the output processor reads.

A `Sequence` is one stream of tokens (prompt + generated) with its block table and the count of
tokens whose KV is already in the cache (`num_computed_tokens`). Every step the scheduler gives
a sequence some of its not-yet-computed tokens; the step samples a new token only when those
reach the end of the sequence. Prefill, chunked prefill, decode and recompute after preemption
are all this one rule.

A `SequenceGroup` is one request: its sampling params, its n sequences (forked from the first
when the prompt's first token is sampled) and the request-level outputs (prompt logprobs,
timing metrics).

Who writes what: the scheduler (runner/engine/scheduler.py) its tokens, blocks, status and raw
logprobs (`sampled_logprobs`, the request's `prompt_logprobs`); the output processor
(runner/engine/output_processor.py) its text, its detokenizer and the logprob dicts of vLLM's
API (`output_logprobs`, `prompt_logprob_dicts`).

With async scheduling a sequence's newest token can be a placeholder: the step that samples it
is still on the GPU when the next step is scheduled. `append_placeholder` stands in for it
(`placeholder_step`: the step that holds it; the model runner takes the next step's input id
from that step's tokens on the device) and `fill_placeholder` writes the real token once it is
read back.
"""
from __future__ import annotations

import enum
import time
from typing import Optional

from runner.engine.outputs import Logprob, RequestMetrics
from runner.engine.prompt_logprobs import PromptLogprobBuffer
from runner.engine.sampling_params import SamplingParams
from runner.engine.scheduler_output import PLACEHOLDER_TOKEN_ID, SampledToken

class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    SWAPPED = 2               # preempted with its KV blocks in the CPU swap space
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= SequenceStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> Optional[str]:
        return {SequenceStatus.FINISHED_STOPPED: "stop",
                SequenceStatus.FINISHED_LENGTH_CAPPED: "length",
                SequenceStatus.FINISHED_ABORTED: "abort"}.get(self)


_FINISHED = SequenceStatus.FINISHED_STOPPED     # this status and above are finished ones


class Sequence:
    def __init__(self, seq_id: int, group: "SequenceGroup", prompt_token_ids: list[int],
                 index: int = 0):
        self.seq_id = seq_id
        self.group = group
        self.index = index                      # position among the request's n outputs
        self.prompt_len = len(prompt_token_ids)
        self.token_ids: list[int] = list(prompt_token_ids)   # prompt + output
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        # an immutable copy for the step's plain output, made again only after the block
        # manager changed the table (it resets this)
        self.table_snapshot = None       # (a read-only numpy array)
        # automatic prefix caching: the hashes of this sequence's full, known blocks, and how
        # many leading blocks of block_table the block manager has registered or taken cached
        self.block_hashes: list[bytes] = []
        self.num_cached_blocks = 0
        self.num_preemptions = 0
        self.status = SequenceStatus.WAITING
        self.cumulative_logprob = 0.0
        self.sampled_logprobs: list[SampledToken] = []        # when params.logprobs is set
        self.stop_reason: Optional[int | str] = None
        # beam search: this beam's best (token ids, logprobs) after its last forward, held until
        # every live beam of the request has its own
        self.beam_candidates: Optional[tuple[list[int], list[float]]] = None
        # async scheduling: the step whose unread sample is this sequence's last token, and
        # whether that token surely ends it (its length limit), so it gets no further step
        self.placeholder_step: Optional[int] = None
        self.finishing = False
        self.sample_spec = None                 # the scheduler's, while it does not change
        self.grammar = None                     # structured outputs: its SequenceGrammar
        self.num_sent = (0, 0)                  # DELTA outputs: (tokens, chars) sent so far
        # the output processor's
        self.output_logprobs: list[dict[int, Logprob]] = []
        self.output_text = ""
        self.detokenizer = None                 # IncrementalDetokenizer
        self.num_detokenized = 0                # output tokens whose text is in output_text

    @property
    def request_id(self) -> str:
        return self.group.request_id

    @property
    def sampling_params(self) -> SamplingParams:
        return self.group.sampling_params

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.prompt_len]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids are on the host (all but a trailing placeholder)."""
        return len(self.token_ids) - (self.placeholder_step is not None)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def is_finished(self) -> bool:
        return self.status >= _FINISHED   # (asked for every sequence every step)

    def append_token(self, token_id: int, logprob: float) -> None:
        self.token_ids.append(token_id)
        self.cumulative_logprob += logprob

    def append_placeholder(self, step_id: int, length_limit: int) -> None:
        """The token that step `step_id`, still in flight, sampled; `length_limit` is the most
        tokens (prompt + output) this sequence may reach."""
        self.token_ids.append(PLACEHOLDER_TOKEN_ID)
        self.placeholder_step = step_id
        self.finishing = len(self.token_ids) >= length_limit

    def fill_placeholder(self, token_id: int, logprob: float) -> None:
        self.token_ids[-1] = token_id
        self.cumulative_logprob += logprob
        self.placeholder_step = None

    def fork(self, seq_id: int, index: int) -> "Sequence":
        """A child that shares everything computed so far (the block table is shared by the
        block manager's reference counts, not here)."""
        child = Sequence(seq_id, self.group, self.token_ids[:self.prompt_len], index)
        child.token_ids = list(self.token_ids)
        child.num_computed_tokens = self.num_computed_tokens
        child.status = self.status
        child.cumulative_logprob = self.cumulative_logprob
        child.sampled_logprobs = list(self.sampled_logprobs)
        return child

    def __repr__(self) -> str:
        return (f"Sequence(seq_id={self.seq_id}, request_id={self.request_id!r}, "
                f"status={self.status.name}, num_tokens={self.num_tokens}, "
                f"num_computed_tokens={self.num_computed_tokens}, blocks={self.block_table})")


class SequenceGroup:
    """One request: n sequences sharing a prompt and sampling params."""

    def __init__(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                 sampling_params: SamplingParams, arrival_time: Optional[float] = None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.seqs: list[Sequence] = []
        # sequences forked from the prompt's first sample: best_of (>= n) for random sampling
        self.num_seqs = sampling_params.best_of or sampling_params.n
        self.forked = False
        self.beam = None                  # BeamSearchState for beam-search requests
        self.beam_temperature = 0.0
        self.beam_include_eos = True
        self.beam_results: Optional[list] = None
        self.grammar = None               # structured outputs: the compiled grammar
        self.grammar_vocab_size = 0
        self.prompt_logprobs_sent = False   # DELTA outputs: prompt_logprobs went out
        now = time.time() if arrival_time is None else arrival_time
        self.metrics = RequestMetrics(arrival_time=now, last_token_time=now,
                                      first_scheduled_time=None, first_token_time=None,
                                      time_in_queue=None, finished_time=None)
        # prompt_logprobs[i] is for prompt token i (None for the first), filled chunk by chunk
        # (or from the prefix cache) with raw entries (logprob, rank, top-k), as arrays
        self.prompt_logprobs: Optional[PromptLogprobBuffer] = (
            PromptLogprobBuffer(len(self.prompt_token_ids))
            if sampling_params.prompt_logprobs is not None else None)
        # of those, the leading full blocks already offered to the prefix cache's store
        self.num_logprob_blocks = 0
        self.prompt_logprob_dicts: list = []     # the entries as vLLM's Logprob dicts
        self.lora_request = None                 # its LoRA adapter (a LoRARequest), if any
        self.num_cached_tokens = None    # prefix-cache hit at first admission (tokens)
        # what besides the tokens names its KV blocks in the prefix cache: the adapter
        self.hash_extra_keys: Optional[bytes] = None

    def set_lora_request(self, lora_request) -> None:
        """Run the request with a LoRA adapter: its KV differs from the base model's, so its
        blocks are hashed apart from other adapters' and the base's."""
        self.lora_request = lora_request
        self.hash_extra_keys = None if lora_request is None else (
            f"lora:{lora_request.lora_int_id}:{lora_request.lora_name}".encode())

    @property
    def n(self) -> int:
        return self.sampling_params.n

    def prompt_logprobs_done(self) -> bool:
        return self.prompt_logprobs is None or len(self.prompt_logprobs) >= len(
            self.prompt_token_ids)

    def is_finished(self) -> bool:
        """All its sequences aborted, its beam search done, or (no beams) all of its
        sequences there and finished. (Asked for every progressed request every step.)"""
        seqs = self.seqs
        if self.beam is None and len(seqs) >= self.num_seqs:
            for s in seqs:            # (aborted sequences are finished ones)
                if s.status < _FINISHED:
                    return False
            return True
        if seqs and all(s.status == SequenceStatus.FINISHED_ABORTED for s in seqs):
            return True
        return self.beam is not None and self.beam.done

    def maybe_set_first_scheduled(self, now: float) -> None:
        if self.metrics.first_scheduled_time is None:
            self.metrics.first_scheduled_time = now
            self.metrics.time_in_queue = now - self.metrics.arrival_time
