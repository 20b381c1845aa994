"""The output processor: a step's progressed requests -> text, logprob dicts, RequestOutputs.

After Scheduler.update_from_output the engine hands over the requests that progressed:

    process(groups)
      now:  the requests with stop strings are detokenized and their new text searched; a hit
            cuts the text and ends the sequence (Scheduler.stop_seq), in the step that
            produced it, so the next schedule already knows
      then: every other sequence's new tokens are detokenized (runner/engine/detokenizer.py),
            raw logprobs become vLLM's Logprob dicts, and a RequestOutput is made for each
            request that finished, or for each that progressed when streaming
            (`stream_outputs`, vLLM's default; LLM.generate asks for finished ones only),
            as each request's output_kind says: CUMULATIVE (all so far), DELTA (what is new
            since its last output: tokens, text, logprobs; prompt_logprobs in the first one
            only) or FINAL_ONLY (nothing until it finishes).

Async output processing (vLLM's; on unless disable_async_output_proc) defers the second half:
the engine runs `run_deferred` while the GPU computes the next step's forward pass (handed to
the executor as the work to overlap), so step() returns the outputs of the step before it and a
final step() with nothing scheduled returns the last ones. Outputs are the same either way:
the deferred half reads the sequences as that step left them (it runs before the next step's
tokens are appended; the text of each sequence is kept token by token, `num_detokenized`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from runner.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from runner.engine.outputs import RequestOutput
from runner.engine.request_outputs import RequestOutputBuilder
from runner.engine.sampling_params import RequestOutputKind
from runner.engine.sequence import Sequence, SequenceGroup, SequenceStatus


@dataclass
class _Deferred:
    """A step's output work left for the next step's forward pass to hide."""
    groups: list                                        # requests that progressed, in order
    finished: set = field(default_factory=set)          # their ids that finished
    aborted: set = field(default_factory=set)           # aborted since: no output for them


class OutputProcessor:
    def __init__(self, tokenizer, scheduler, async_output_proc: bool):
        self.tokenizer = tokenizer
        self.builder = RequestOutputBuilder(tokenizer)
        self.scheduler = scheduler
        self.async_output_proc = async_output_proc
        # step() returns outputs of every request that progressed (streaming, vLLM's default);
        # LLM.generate turns this off and gets only finished requests (vLLM's FINAL_ONLY)
        self.stream_outputs = True
        self._deferred: Optional[_Deferred] = None
        self._ready: list[RequestOutput] = []
        self.busy = False           # inside the deferred work (its failure is not retried)
        self.output_proc_s = 0.0    # wall time of the deferred work

    def set_tokenizer(self, tokenizer) -> None:
        """Decode with `tokenizer` from now on: output text and Logprob.decoded_token (the
        builder's decoded-token cache belongs to the old one and goes with it)."""
        self.tokenizer = tokenizer
        self.builder = RequestOutputBuilder(tokenizer)

    @property
    def has_pending(self) -> bool:
        return self._deferred is not None or bool(self._ready)

    def process(self, groups: list[SequenceGroup]) -> None:
        """One step's progressed requests: stop strings now, the rest now or deferred."""
        self.run_deferred()          # (already done while the forward ran, as a rule)
        for group in groups:
            if group.sampling_params.stop and group.beam is None:
                for seq in group.seqs:
                    self._detokenize(seq, check_stop=True)
        self._deferred = _Deferred(groups, {g.request_id for g in groups if g.is_finished()})
        if not self.async_output_proc:
            self.run_deferred()

    def run_deferred(self) -> None:
        """The deferred half: detokenize, logprob dicts, RequestOutputs."""
        d, self._deferred = self._deferred, None
        if d is None:
            return
        t = time.perf_counter()
        self.busy = True
        try:
            for group in d.groups:
                rid = group.request_id
                finished = rid in d.finished
                if rid in d.aborted and not finished:
                    continue
                p = group.sampling_params
                if group.beam is None and (p.logprobs is not None or (
                        p.detokenize and self.tokenizer is not None)):
                    for seq in group.seqs:
                        self._detokenize(seq)
                        self._logprob_dicts(seq)
                # output_kind (vLLM's RequestOutputKind): FINAL_ONLY streams nothing before
                # the end, DELTA only what is new since the request's last output
                kind = p.output_kind
                if finished or (self.stream_outputs and kind is not RequestOutputKind.FINAL_ONLY):
                    self._ready.append(self.builder.make_output(
                        group, finished, delta=kind is RequestOutputKind.DELTA))
        finally:
            self.busy = False
        self.output_proc_s += time.perf_counter() - t

    def abort(self, request_ids: list[str]) -> None:
        """Aborted requests get no more outputs, held back ones included."""
        if self._deferred is not None:
            self._deferred.aborted.update(request_ids)
        if self._ready:
            gone = set(request_ids)
            self._ready = [o for o in self._ready if o.request_id not in gone]

    def drop_deferred(self) -> None:
        self._deferred = None

    def take_ready(self) -> list[RequestOutput]:
        ready, self._ready = self._ready, []
        return ready

    # ------------------------------------------------------------------ per sequence
    def _detokenizer(self, seq: Sequence) -> Optional[IncrementalDetokenizer]:
        if seq.detokenizer is None:
            p = seq.sampling_params
            if self.tokenizer is None or not p.detokenize or seq.group.beam is not None:
                return None
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, seq.prompt_token_ids, p.skip_special_tokens,
                p.spaces_between_special_tokens)
        return seq.detokenizer

    def _detokenize(self, seq: Sequence, check_stop: bool = False) -> None:
        """Text for the sequence's tokens not turned into text yet (one at a time: a stop
        string is searched in the text each token adds)."""
        if seq.status == SequenceStatus.FINISHED_ABORTED:
            return
        det = self._detokenizer(seq)
        if det is None:
            return
        num_known = seq.num_known_tokens - seq.prompt_len
        while seq.num_detokenized < num_known and not isinstance(seq.stop_reason, str):
            tok = seq.token_ids[seq.prompt_len + seq.num_detokenized]
            new_chars = len(self._append_text(seq, det, tok))
            seq.num_detokenized += 1
            if check_stop and self._stop_string(seq, new_chars):
                return
        if seq.is_finished() and not isinstance(seq.stop_reason, str) and \
                seq.num_detokenized == num_known:
            # the sequence ended: emit bytes held back as an incomplete character
            det.flush()
            seq.output_text = det.output_text

    @staticmethod
    def _append_text(seq: Sequence, det: IncrementalDetokenizer, token_id: int) -> str:
        new_text = det.append([token_id])
        seq.output_text = det.output_text
        return new_text

    def _stop_string(self, seq: Sequence, new_chars: int) -> bool:
        """Whether the text the token at seq.num_detokenized added completes a stop string
        (not before min_tokens; a stop by EOS or stop id on that very token comes first)."""
        p = seq.sampling_params
        last = seq.num_detokenized == seq.num_known_tokens - seq.prompt_len
        if seq.num_detokenized < p.min_tokens or (
                last and seq.status == SequenceStatus.FINISHED_STOPPED):
            return False
        hit = find_stop_string(seq.output_text, new_chars, p.stop,
                               p.include_stop_str_in_output)
        if hit is None:
            return False
        reason, cut = hit
        seq.output_text = seq.output_text[:cut]
        self.scheduler.stop_seq(seq, reason)
        return True

    def _logprob_dicts(self, seq: Sequence) -> None:
        if seq.sampling_params.logprobs is None:
            return
        make = self.builder.logprob_dict
        for tok in seq.sampled_logprobs[len(seq.output_logprobs):]:
            seq.output_logprobs.append(make(tok.token_id, tok.logprob, tok.rank,
                                            tok.top_logprobs))
