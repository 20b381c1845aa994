"""LLM.beam_search's rules: vLLM 0.24's offline beam search, run on the engine's in-engine beams.

runner/engine/beam_search.py keeps the machinery (beams are sequences of one group that fork
their parent's KV blocks; `advance_beams` applies a step) and HF's rules for the legacy
use_beam_search. `LLM.beam_search` (BeamSearchParams) follows vLLM instead, whose algorithm
(vllm/entrypoints/generate/beam_search) is, per step and per request:

- every live beam proposes its 2 * beam_width most likely next tokens (raw log-probabilities:
  vLLM asks its engine for logprobs=2 * beam_width of one token sampled at the temperature;
  at temperature > 0 that drawn token is proposed too, first, when it is not among them);
- a proposal of the tokenizer's EOS token (unless ignore_eos) is a completed beam, EOS kept:
  every such proposal is kept, not only the best ones;
- the other proposals, best first by get_beam_search_score, become the beam_width next beams
  (stable order: beam by beam, each one's proposals best first);
- after max_tokens steps the live beams are completed too; all completed beams are sorted by
  get_beam_search_score and the best beam_width returned.

get_beam_search_score(tokens, cum_logprob) = cum_logprob / len ** length_penalty, len counting
the prompt and the generated tokens but not a final EOS. vLLM sets no finish_reason or
stop_reason on these beams; LLM.beam_search leaves them None as well.

`VllmBeamSearchState` has BeamSearchState's interface (step, final, num_candidates,
eos_token_ids, finished, done), so `advance_beams` and the scheduler serve both.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Optional

from runner.engine.beam_search import BeamCandidate, BeamHypothesis


def get_beam_search_score(tokens_len: int, cumulative_logprob: float, ends_with_eos: bool,
                          length_penalty: float = 1.0) -> float:
    """vLLM's score of a beam of `tokens_len` tokens (prompt included)."""
    return cumulative_logprob / _length_norm(tokens_len, ends_with_eos, length_penalty)


def _length_norm(tokens_len: int, ends_with_eos: bool, length_penalty: float) -> float:
    seq_len = tokens_len - 1 if ends_with_eos else tokens_len
    return seq_len ** length_penalty


@dataclass
class VllmBeamSearchState:
    beam_width: int
    length_penalty: float
    max_tokens: int
    eos_token_id: Optional[int]          # the tokenizer's (None: ignore_eos, or none known)
    prompt_len: int
    finished: list[BeamHypothesis] = field(default_factory=list)
    done: bool = False
    # every candidate of a step is reported in the step's logprobs dict (vLLM's dict holds the
    # 2 * beam_width alternatives of the parent, whichever child took which)
    all_candidates_in_logprobs = True

    @property
    def num_candidates(self) -> int:
        return 2 * self.beam_width

    @property
    def eos_token_ids(self) -> list[int]:
        return [] if self.eos_token_id is None else [self.eos_token_id]

    def _score(self, gen_len: int, total: float, ends_with_eos: bool) -> float:
        return get_beam_search_score(self.prompt_len + gen_len, total, ends_with_eos,
                                     self.length_penalty)

    def step(self, beam_totals: list[float], beam_candidates: list[list[tuple[int, float]]],
             gen_len: int) -> list[BeamCandidate]:
        """beam_totals[i]: live beam i's cumulative logprob; beam_candidates[i]: its best
        (token_id, logprob) pairs, best first (num_candidates of them); gen_len: the tokens each
        live beam has generated. Returns the next beams' parents and tokens, best first."""
        new_len = gen_len + 1
        eos = self.eos_token_id
        # the proposals as (parent, token, logprob, total); a BeamCandidate only for the kept
        flat = [(i, tok, lp, beam_totals[i] + lp)
                for i, cands in enumerate(beam_candidates) for tok, lp in cands]
        if eos is not None and any(p[1] == eos for p in flat):
            for p in flat:
                if p[1] == eos:
                    self._add_finished(BeamCandidate(*p, ends=True), new_len, True)
            flat = [p for p in flat if p[1] != eos]
        # vLLM's order: sorted by score, best first, stable (nlargest is that sort's head)
        norm = _length_norm(self.prompt_len + new_len, False, self.length_penalty)
        scores = [p[3] / norm for p in flat]
        best = heapq.nlargest(self.beam_width, range(len(scores)), key=scores.__getitem__)
        running = [BeamCandidate(*flat[j]) for j in best]
        if new_len >= self.max_tokens or not running:
            for c in running:                   # vLLM: the live beams complete at the end
                self._add_finished(c, new_len, False)
            self.done = True
            return []
        return running

    def _add_finished(self, c: BeamCandidate, gen_len: int, eos: bool) -> None:
        hyp = BeamHypothesis(token_ids=[], cumulative_logprob=c.total,
                             score=self._score(gen_len, c.total, eos), finish_reason=None)
        hyp._candidate = c                      # noqa: SLF001 (resolved by advance_beams)
        self.finished.append(hyp)

    def final(self, live, n: int) -> list[BeamHypothesis]:
        """The n best completed beams (the live ones were completed by the last step)."""
        return sorted(self.finished, key=lambda h: h.score, reverse=True)[:n]
