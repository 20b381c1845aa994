"""RequestOutputs from the engine's sequences: the completions of a request as it stands (best_of
and beam search choose theirs when it finishes), and the logprob dictionaries of vLLM's API
(the sampled token and the top alternatives, each with its rank and decoded text), made from
the raw logprobs the scheduler keeps. Used by the output processor
(runner/engine/output_processor.py)."""
from __future__ import annotations

from typing import Optional

from runner.engine.outputs import CompletionOutput, Logprob, RequestOutput
from runner.engine.sequence import SequenceGroup


class RequestOutputBuilder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _decode_token(self, token_id: int) -> Optional[str]:
        return None if self.tokenizer is None else self.tokenizer.decode([token_id])

    def logprob_dict(self, token_id: int, lp: float, rank: int, top) -> dict[int, Logprob]:
        d = {token_id: Logprob(lp, rank, self._decode_token(token_id))}
        for r, (tid, tlp) in enumerate(top or [], start=1):
            if tid not in d:
                d[tid] = Logprob(tlp, r, self._decode_token(tid))
        return d

    def make_output(self, group: SequenceGroup, finished: bool) -> RequestOutput:
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
                completions.append(CompletionOutput(
                    index=i if finished else seq.index, text=text,
                    token_ids=seq.token_ids[seq.prompt_len:seq.num_known_tokens],
                    cumulative_logprob=seq.cumulative_logprob,
                    logprobs=list(seq.output_logprobs) if p.logprobs is not None else None,
                    finish_reason=seq.status.finish_reason, stop_reason=seq.stop_reason))
        return RequestOutput(
            request_id=group.request_id, prompt=group.prompt,
            prompt_token_ids=group.prompt_token_ids,
            prompt_logprobs=self._prompt_logprobs(group),
            outputs=completions, finished=finished, metrics=group.metrics)

    def _prompt_logprobs(self, group: SequenceGroup) -> Optional[list]:
        """The request's raw prompt-logprob entries as dicts (built once each)."""
        if group.prompt_logprobs is None:
            return None
        dicts = group.prompt_logprob_dicts
        ids = group.prompt_token_ids
        for i in range(len(dicts), len(group.prompt_logprobs)):
            e = group.prompt_logprobs[i]
            dicts.append(None if e is None else self.logprob_dict(ids[i], *e))
        return list(dicts)

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
        for i, (tokens, cum, raw, reason) in enumerate(items):
            lps = None if raw is None else [
                self.logprob_dict(t.token_id, t.logprob, t.rank, t.top_logprobs) for t in raw]
            text = "" if self.tokenizer is None or not p.detokenize else self.tokenizer.decode(
                tokens, skip_special_tokens=p.skip_special_tokens)
            out.append(CompletionOutput(index=i, text=text, token_ids=list(tokens),
                                        cumulative_logprob=cum, logprobs=lps,
                                        finish_reason=reason))
        return out

