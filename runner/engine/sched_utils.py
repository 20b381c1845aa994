"""The scheduler's two per-sequence rules: what a scheduled chunk tells the model runner, and
the token stop checks (vLLM v1 keeps check_stop in core/sched/utils.py as well).

`scheduled_seq` turns a chunk of a Sequence into plain data (runner/engine/scheduler_output.py):
its input ids, a copy of its block table (a read-only int32 array, made again only when the
table changed: the model runner stacks them without converting each), the prompt positions whose logits score the prompt's
next tokens, and, when the chunk reaches the sequence's end, what its sample needs.
`check_stop` ends a sequence on a sampled token: every EOS id of the model, stop_token_ids,
max_tokens, max_model_len (stop strings are the output processor's).
"""
from __future__ import annotations

import numpy as np

from runner.engine.scheduler_output import (BeamSpec, PromptLogprobSpec, SampleSpec,
                                            ScheduledSeq)
from runner.engine.sequence import Sequence, SequenceStatus
from runner.engine.structured_output import SequenceGrammar


def needs_history(p) -> bool:
    """Whether sampling reads the sequence's output tokens (penalties, min_tokens, logits
    processors): only then are they copied into the step."""
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                or p.min_tokens or p.logits_processors or p.bad_words
                or p.structured_outputs is not None)


def scheduled_seq(seq: Sequence, start: int, num_new_tokens: int) -> ScheduledSeq:
    """(Called for every scheduled sequence of every step: the decode case stays cheap.)"""
    end = start + num_new_tokens
    token_ids = seq.token_ids
    if end == len(token_ids):
        sample = seq.sample_spec or sample_spec(seq)
        placeholder = -1 if seq.placeholder_step is None else seq.placeholder_step
    else:
        sample, placeholder = None, -1
    group = seq.group
    table = seq.table_snapshot
    if table is None:
        table = seq.table_snapshot = np.array(seq.block_table, np.int32)
        table.flags.writeable = False
    return ScheduledSeq(seq.seq_id, group.request_id, start, token_ids[start:end],
                        table, placeholder, sample,
                        None if group.prompt_logprobs is None else
                        prompt_logprob_spec(seq, start, end),
                        0 if group.lora_request is None else group.lora_request.lora_int_id)


def sample_spec(seq: Sequence) -> SampleSpec:
    """What the sample of `seq`'s last row needs; kept on the sequence (`seq.sample_spec`)
    while it stays the same from step to step (no fork ahead, no beam, no history)."""
    group = seq.group
    p = group.sampling_params
    if group.beam is not None:
        masked = group.beam.eos_token_ids if seq.num_output_tokens < p.min_tokens else ()
        if getattr(group.beam, "all_candidates_in_logprobs", False):
            # LLM.beam_search (vLLM's): raw logprobs, plus one token drawn at the temperature
            beam = BeamSpec(1.0, group.beam.num_candidates, tuple(masked),
                            max(group.beam_temperature, 0.0))
        else:
            beam = BeamSpec(max(group.beam_temperature, 0.0) or 1.0,
                            max(group.beam.num_candidates, p.logprobs or 0), tuple(masked))
        return SampleSpec(p, (seq.index,), group.prompt_token_ids, None, beam)
    fork = not group.forked and group.num_seqs > 1
    indices = tuple(range(group.num_seqs)) if fork else (seq.index,)
    if needs_history(p):
        # copying the generated tokens costs O(length) per step: only when a rule reads them
        history = seq.token_ids[seq.prompt_len:seq.num_known_tokens]
        mask = None
        if group.grammar is not None:
            if seq.grammar is None:
                seq.grammar = SequenceGrammar(group.grammar, group.grammar_vocab_size)
            mask = seq.grammar.bitmask(history)
        return SampleSpec(p, indices, group.prompt_token_ids, history, grammar_bitmask=mask)
    spec = SampleSpec(p, indices, group.prompt_token_ids)
    if not fork:
        seq.sample_spec = spec
    return spec


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
    p = seq.group.sampling_params
    num_tokens = len(seq.token_ids)
    num_output = num_tokens - seq.prompt_len
    if num_output >= p.min_tokens:
        if token_id in eos_token_ids and not p.ignore_eos:
            seq.status = SequenceStatus.FINISHED_STOPPED
            if token_id != eos_token_ids[0]:
                seq.stop_reason = token_id
            return
        if p.stop_token_ids and token_id in p.stop_token_ids:
            seq.status = SequenceStatus.FINISHED_STOPPED
            seq.stop_reason = token_id
            return
    if p.max_tokens is not None and num_output >= p.max_tokens:
        seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
    elif num_tokens >= max_model_len:
        seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
