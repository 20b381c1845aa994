"""RequestOutputs from the engine's sequences: the completions of a request as it stands (best_of
and beam search choose theirs when it finishes), and the logprob dictionaries of vLLM's API
(the sampled token and the top alternatives, each with its rank and decoded text), made from
the raw logprobs the scheduler keeps. Used by the output processor
(runner/engine/output_processor.py)."""
from __future__ import annotations

import itertools
from typing import Optional

from runner.engine.outputs import CompletionOutput, Logprob, RequestOutput
from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.sequence import SequenceGroup


class _NoText(dict):
    """decoded_token without a tokenizer: None for every id."""

    def __missing__(self, token_id):
        return None


class RequestOutputBuilder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # decoded_token of each id seen (vLLM decodes every id alone, with the tokenizer's
        # defaults, so the text of an id never changes): one decode per id, not per position
        self._texts: dict[int, Optional[str]] = {} if tokenizer is not None else _NoText()

    def _decoded(self, token_ids) -> dict[int, Optional[str]]:
        """The id -> decoded_token map, holding every id of `token_ids`."""
        texts = self._texts
        if self.tokenizer is not None:
            for t in set(token_ids).difference(texts):
                texts[t] = self.tokenizer.decode([t])
        return texts

    def logprob_dict(self, token_id: int, lp: float, rank: int, top) -> dict[int, Logprob]:
        top = top or []
        texts = self._decoded([token_id, *(tid for tid, _ in top)])
        d = {token_id: Logprob(lp, rank, texts[token_id])}
        for r, (tid, tlp) in enumerate(top, start=1):
            if tid not in d:
                d[tid] = Logprob(tlp, r, texts[tid])
        return d

    def make_output(self, group: SequenceGroup, finished: bool,
                    delta: bool = False) -> RequestOutput:
        """The request's output as it stands; `delta` (RequestOutputKind.DELTA): only the
        tokens, text and logprobs that no earlier output of it held."""
        p = group.sampling_params
        if group.beam is not None:
            completions = self._beam_completions(group, finished)
        else:
            seqs = sorted(group.seqs, key=lambda s: s.index)
            if finished and group.num_seqs > p.n:
                # best_of: keep the n candidates with the highest cumulative logprob
                seqs = sorted(seqs, key=lambda s: -s.cumulative_logprob)[:p.n]
            completions = []
            for i, seq in enumerate(seqs):
                text = seq.output_text
                if not seq.is_finished() and p.output_text_buffer_length:
                    text = text[:-p.output_text_buffer_length] or ""
                token_ids = seq.token_ids[seq.prompt_len:seq.num_known_tokens]
                logprobs = list(seq.output_logprobs) if p.logprobs is not None else None
                if delta:
                    sent_tokens, sent_chars = seq.num_sent
                    seq.num_sent = (len(token_ids), max(len(text), sent_chars))
                    token_ids, text = token_ids[sent_tokens:], text[sent_chars:]
                    if logprobs is not None:
                        logprobs = logprobs[sent_tokens:]
                completions.append(CompletionOutput(
                    index=i if finished else seq.index, text=text, token_ids=token_ids,
                    cumulative_logprob=seq.cumulative_logprob, logprobs=logprobs,
                    finish_reason=seq.status.finish_reason, stop_reason=seq.stop_reason))
        prompt_logprobs = self._prompt_logprobs(group)
        if delta and prompt_logprobs is not None:
            # (vLLM's DELTA: the prompt's logprobs come with the first output only)
            if group.prompt_logprobs_sent:
                prompt_logprobs = None
            group.prompt_logprobs_sent = True
        return RequestOutput(
            request_id=group.request_id, prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=completions, finished=finished, metrics=group.metrics,
            num_cached_tokens=group.num_cached_tokens or 0)

    def _prompt_logprobs(self, group: SequenceGroup) -> Optional[list]:
        """The request's raw prompt-logprob entries as dicts (built once each, in bulk: the
        arrays are read once, each id decoded once)."""
        if group.prompt_logprobs is None:
            return None
        dicts = group.prompt_logprob_dicts
        raw = group.prompt_logprobs
        start = len(dicts)
        if not start and len(raw):
            dicts.append(None)              # nothing predicts the first token
            start = 1
        if start < len(raw):
            dicts += self.prompt_logprob_dicts(raw.chunk(start, len(raw)),
                                               group.prompt_token_ids[start:len(raw)])
        return list(dicts)

    def _step_dict(self, t, made: dict) -> dict:
        d = made.get(id(t))
        if d is None:
            d = made[id(t)] = self.logprob_dict(t.token_id, t.logprob, t.rank, t.top_logprobs)
        return d

    def _beam_completions(self, group: SequenceGroup, finished: bool) -> list[CompletionOutput]:
        """Finished: the n best hypotheses by length-penalized score. Running: the live beams,
        best first."""
        p = group.sampling_params
        if finished and group.beam_results is not None:
            items = [(h.token_ids, h.cumulative_logprob, h.logprobs, h.finish_reason)
                     for h in group.beam_results]
        else:
            items = [(q.output_token_ids, q.cumulative_logprob,
                      q.sampled_logprobs if p.logprobs is not None else None, None)
                     for q in group.seqs[:p.n]]
        out = []
        # beams share their ancestors' steps (one SampledToken each): one dict per step, as
        # vLLM's beams share their parents' dicts
        made: dict[int, dict] = {}
        for i, (tokens, cum, raw, reason) in enumerate(items):
            lps = None if raw is None else [self._step_dict(t, made) for t in raw]
            text = "" if self.tokenizer is None or not p.detokenize else self.tokenizer.decode(
                tokens, skip_special_tokens=p.skip_special_tokens)
            out.append(CompletionOutput(index=i, text=text, token_ids=list(tokens),
                                        cumulative_logprob=cum, logprobs=lps,
                                        finish_reason=reason))
        return out

    def prompt_logprob_dicts(self, chunk: PromptLogprobChunk,
                             token_ids: list[int]) -> list[dict[int, Logprob]]:
        """vLLM's dict per position: the prompt token with its logprob and rank first, then the
        top alternatives best first (rank 1, 2, ...), the prompt token not twice."""
        lps, ranks = chunk.logprobs.tolist(), chunk.ranks.tolist()
        k = chunk.top_ids.shape[1]
        top_ids = chunk.top_ids.ravel().tolist()        # position i's: [i * k, (i + 1) * k)
        top_lps = chunk.top_logprobs.ravel().tolist()
        if self.tokenizer is None:
            tok_texts, top_texts = [None] * len(token_ids), [None] * len(top_ids)
        else:
            texts = self._decoded(token_ids + top_ids)
            tok_texts, top_texts = [texts[t] for t in token_ids], [texts[t] for t in top_ids]
        # (the Logprobs are made by map, a loop in C: this runs for every prompt position)
        first = map(Logprob, lps, ranks, tok_texts)
        if k == 0:
            return [{tok: lp} for tok, lp in zip(token_ids, first)]
        if k == 1:                    # the common case (lm-eval): no inner loop
            best = map(Logprob, top_lps, itertools.repeat(1), top_texts)
            return [{tok: lp} if tok == tid else {tok: lp, tid: top}
                    for tok, lp, tid, top in zip(token_ids, first, top_ids, best)]
        out = []
        append = out.append
        for i, (tok, lp) in enumerate(zip(token_ids, first)):
            d = {tok: lp}
            for r, j in enumerate(range(i * k, (i + 1) * k), start=1):
                tid = top_ids[j]
                if tid not in d:
                    d[tid] = Logprob(top_lps[j], r, top_texts[j])
            append(d)
        return out
