"""The scheduler's two per-sequence rules: what a scheduled chunk tells the model runner, and
the token stop checks (vLLM v1 keeps check_stop in core/sched/utils.py as well).

`scheduled_seq` turns a chunk of a Sequence into plain data (runner/engine/scheduler_output.py):
its input ids, a copy of its block table, the prompt positions whose logits score the prompt's
next tokens, and, when the chunk reaches the sequence's end, what its sample needs.
`check_stop` ends a sequence on a sampled token: every EOS id of the model, stop_token_ids,
max_tokens, max_model_len (stop strings are the output processor's).
"""
from __future__ import annotations

from runner.engine.scheduler_output import (BeamSpec, PromptLogprobSpec, SampleSpec,
                                            ScheduledSeq)
from runner.engine.sequence import Sequence, SequenceStatus


def needs_history(p) -> bool:
    """Whether sampling reads the sequence's output tokens (penalties, min_tokens, logits
    processors): only then are they copied into the step."""
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                or p.min_tokens or p.logits_processors)


def scheduled_seq(seq: Sequence, start: int, num_new_tokens: int) -> ScheduledSeq:
    end = start + num_new_tokens
    sample = sample_spec(seq) if end == seq.num_tokens else None
    placeholder = seq.placeholder_step if sample is not None and \
        seq.placeholder_step is not None else -1
    return ScheduledSeq(seq.seq_id, seq.group.request_id, start, seq.token_ids[start:end],
                        list(seq.block_table), placeholder, sample,
                        prompt_logprob_spec(seq, start, end))


def sample_spec(seq: Sequence) -> SampleSpec:
    group = seq.group
    p = group.sampling_params
    if group.beam is not None:
        masked = group.beam.eos_token_ids if seq.num_output_tokens < p.min_tokens else ()
        beam = BeamSpec(max(group.beam_temperature, 0.0) or 1.0,
                        max(group.beam.num_candidates, p.logprobs or 0), tuple(masked))
        return SampleSpec(p, (seq.index,), group.prompt_token_ids, None, beam)
    fork = not group.forked and group.num_seqs > 1
    indices = tuple(range(group.num_seqs)) if fork else (seq.index,)
    # copying the generated tokens costs O(length) per step: only when a rule reads them
    history = seq.token_ids[seq.prompt_len:seq.num_known_tokens] if needs_history(p) else None
    return SampleSpec(p, indices, group.prompt_token_ids, history)


def prompt_logprob_spec(seq: Sequence, start: int, end: int):
    """The positions of a chunk whose logits score the prompt's next tokens (those not
    scored yet, nor taken from the prefix cache)."""
    group = seq.group
    if group.prompt_logprobs is None or group.prompt_logprobs_done() or seq.index != 0:
        return None
    first = max(start, len(group.prompt_logprobs) - 1)
    last = min(end, seq.prompt_len - 1)
    if last <= first:
        return None
    return PromptLogprobSpec(first, seq.token_ids[first + 1:last + 1],
                             group.sampling_params.prompt_logprobs)


def check_stop(seq: Sequence, token_id: int, eos_token_ids: tuple[int, ...],
               max_model_len: int) -> None:
    """The stop conditions a sampled token decides. The first EOS id is the primary one
    (stop_reason None); the others stop as vLLM's generation_config stop ids (stop_reason
    the id)."""
    p = seq.sampling_params
    if seq.num_output_tokens >= p.min_tokens:
        if token_id in eos_token_ids and not p.ignore_eos:
            seq.status = SequenceStatus.FINISHED_STOPPED
            if token_id != eos_token_ids[0]:
                seq.stop_reason = token_id
            return
        if p.stop_token_ids and token_id in p.stop_token_ids:
            seq.status = SequenceStatus.FINISHED_STOPPED
            seq.stop_reason = token_id
            return
    if p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
        seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
    elif seq.num_tokens >= max_model_len:
        seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
