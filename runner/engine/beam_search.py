"""Beam search bookkeeping for one request: which beams live on, which finish, when to stop.

The engine runs a request's beams as ordinary sequences of one group (they fork their parent's
KV blocks and decode in the same batches as everything else). After each step the model runner
hands over, for every live beam, its best candidate tokens with their log-probabilities; once
every live beam has them, the scheduler calls `advance_beams`, whose `BeamSearchState.step()`
decides the next beams and the finished hypotheses; the parents are forked for the extra
children and the beams that died end. The rules are HF transformers' beam search, so that
results match it token for token:

- candidates are scored by the beam's cumulative logprob plus the token's; the best
  K = max(2, 1 + number of EOS tokens) * beam_width across all beams are considered, best first;
- a candidate that ends its hypothesis (an EOS token, or max_tokens reached) is finished only if
  it ranks within the first beam_width; its score is cumulative_logprob / generated_len **
  length_penalty, and the beam_width best finished hypotheses are kept;
- the beam_width best candidates that do not end become the next beams;
- early_stopping=True stops once beam_width hypotheses are finished; False stops when the best
  live beam, length-penalized at its current length, cannot beat the worst finished one;
  "never" does the same with the best length a beam could still reach when length_penalty > 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from runner.engine.scheduler_output import SampledToken

_NEG = -1.0e9


@dataclass
class BeamHypothesis:
    token_ids: list[int]          # generated tokens only
    cumulative_logprob: float
    score: float                  # length-penalized
    finish_reason: str            # "stop" (EOS) or "length"
    logprobs: Optional[list] = None


@dataclass
class BeamCandidate:
    parent: int                   # index of the live beam it extends
    token_id: int
    logprob: float                # the token's own logprob
    total: float                  # parent's cumulative logprob + logprob
    ends: bool = False
    finish_reason: Optional[str] = None


@dataclass
class BeamSearchState:
    beam_width: int
    length_penalty: float
    early_stopping: Union[bool, str]
    max_tokens: int
    eos_token_ids: list[int]
    finished: list[BeamHypothesis] = field(default_factory=list)
    improvement_possible: bool = True
    done: bool = False

    @property
    def num_candidates(self) -> int:
        return max(2, 1 + len(self.eos_token_ids)) * self.beam_width

    def _penalize(self, total: float, gen_len: int) -> float:
        return total / (gen_len ** self.length_penalty)

    def step(self, beam_totals: list[float], beam_candidates: list[list[tuple[int, float]]],
             gen_len: int) -> list[BeamCandidate]:
        """One beam-search step.

        beam_totals[i]: cumulative logprob of live beam i; beam_candidates[i]: its best
        (token_id, logprob) pairs, at least `num_candidates` of them (or the whole vocabulary);
        gen_len: tokens each live beam has generated so far. Returns the next live beams' parents
        and tokens (best first); sets `done` when the search is over.
        """
        flat = [BeamCandidate(i, tok, lp, beam_totals[i] + lp)
                for i, cands in enumerate(beam_candidates) for tok, lp in cands]
        # stable sort: equal totals keep (beam, token-rank) order, like a flattened topk
        flat.sort(key=lambda c: -c.total)
        top = flat[:self.num_candidates]
        new_len = gen_len + 1
        for c in top:
            if c.token_id in self.eos_token_ids:
                c.ends, c.finish_reason = True, "stop"
            elif new_len >= self.max_tokens:
                c.ends, c.finish_reason = True, "length"

        full = len(self.finished) >= self.beam_width
        accept = self.improvement_possible and not (full and self.early_stopping is True)
        if accept:
            for rank, c in enumerate(top[:self.beam_width]):
                if c.ends:
                    self._add_finished(c, new_len)

        running = [c for c in top if not c.ends][:self.beam_width]
        best_running = running[0].total if running else _NEG
        self._update_improvement(best_running, new_len)
        full = len(self.finished) >= self.beam_width
        self.done = (not self.improvement_possible or (full and self.early_stopping is True)
                     or all(c.ends for c in top))
        return running

    def _add_finished(self, c: BeamCandidate, gen_len: int) -> None:
        # `token_ids` is filled in by the caller, which knows the parent's tokens
        hyp = BeamHypothesis(token_ids=[], cumulative_logprob=c.total,
                             score=self._penalize(c.total, gen_len),
                             finish_reason=c.finish_reason)
        hyp._candidate = c                      # noqa: SLF001 (resolved by advance_beams)
        self.finished.append(hyp)
        self.finished.sort(key=lambda h: -h.score)
        del self.finished[self.beam_width:]

    def _update_improvement(self, best_running_total: float, gen_len: int) -> None:
        if not self.improvement_possible:
            return
        if len(self.finished) < self.beam_width:
            return          # an empty slot can always still be filled
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_len = self.max_tokens
        else:
            best_len = gen_len
        best_possible = best_running_total / (best_len ** self.length_penalty)
        worst_finished = min(h.score for h in self.finished)
        self.improvement_possible = best_possible > worst_finished

    def final(self, live: list[tuple[list[int], float, Optional[list]]], n: int
              ) -> list[BeamHypothesis]:
        """The n best hypotheses; live beams (tokens, cumulative logprob, logprobs) fill the
        slots that no finished hypothesis took (only when the search stopped early)."""
        hyps = list(self.finished)
        if len(hyps) < n:
            for tokens, total, lps in live:
                hyps.append(BeamHypothesis(list(tokens), total,
                                           self._penalize(total, max(1, len(tokens))),
                                           "length", lps))
        hyps.sort(key=lambda h: -h.score)
        return hyps[:n]


def advance_beams(group, live: list, fork: Callable) -> None:
    """One beam-search step of request `group` whose `live` beams (Sequences) all hold their
    candidates: next beams (`fork(parent)` makes a new running beam sharing the parent's
    blocks), finished hypotheses, and the dead beams marked finished (freed by the scheduler).
    Log-probabilities are kept raw (SampledToken); the output builder makes their dicts."""
    from runner.engine.sequence import SequenceStatus
    state = group.beam
    # (vLLM's beam search returns every step's logprobs dict: its state asks for them)
    want_lps = group.sampling_params.logprobs
    every = getattr(state, "all_candidates_in_logprobs", False)
    if want_lps is None and every:
        want_lps = state.num_candidates
    cands = [list(zip(*q.beam_candidates)) for q in live]
    if every:
        # vLLM's proposal order: the sampled token first (when one was drawn), then the rest
        for i, q in enumerate(live):
            tok = getattr(q.beam_candidates, "sampled", None)
            if tok is not None:
                cands[i].sort(key=lambda pair: pair[0] != tok)
    running = state.step([q.cumulative_logprob for q in live], cands, live[0].num_output_tokens)
    for hyp in state.finished:
        c = getattr(hyp, "_candidate", None)
        if c is None:
            continue
        parent = live[c.parent]
        hyp.token_ids = parent.output_token_ids + [c.token_id]
        if want_lps is not None:
            hyp.logprobs = parent.sampled_logprobs + [_raw_logprob(parent, c, want_lps)]
        del hyp._candidate
    new_beams = []
    if not state.done:
        # first decide who continues each candidate: the parent itself for its best child, a
        # fork of the (still unchanged) parent for any further child
        assigned, used = [], set()
        for c in running:
            parent = live[c.parent]
            if c.parent in used:
                beam = fork(parent)
            else:
                used.add(c.parent)
                beam = parent
            assigned.append((beam, c))
        for beam, c in assigned:
            if want_lps is not None:
                beam.sampled_logprobs.append(_raw_logprob(live[c.parent], c, want_lps))
            beam.append_token(c.token_id, c.logprob)
            new_beams.append(beam)
        group.forked = True
    for q in live:
        q.beam_candidates = None
        if state.done or q not in new_beams:
            q.status = SequenceStatus.FINISHED_STOPPED
    if state.done:
        beams = [(q.output_token_ids, q.cumulative_logprob,
                  q.sampled_logprobs if want_lps is not None else None) for q in live]
        group.beam_results = state.final(beams, group.sampling_params.n)
        group.seqs = live
    else:
        for i, beam in enumerate(new_beams):
            beam.index = i
        group.seqs = new_beams


def _raw_logprob(parent, c: BeamCandidate, k: int) -> SampledToken:
    cands = parent.beam_candidates
    ids, lps = cands
    extra = getattr(cands, "extra_rank", None)
    if extra is not None:                   # vLLM's: the drawn token is in the dict too
        k = len(ids)
        if c.token_id == ids[-1]:
            return SampledToken(c.token_id, c.logprob, extra, list(zip(ids, lps)))
    rank = ids.index(c.token_id) + 1 if c.token_id in ids else None
    return SampledToken(c.token_id, c.logprob, rank, list(zip(ids[:k], lps[:k])))
