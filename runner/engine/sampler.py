"""The batched sampler: one row of logits per running sequence in, one sampled token per row out.

The model runner calls `Sampler()(logits, requests)` once per step with logits [num_rows, vocab]
(one row per sequence that produces a token this step) and one `SamplingRequest` per row. Each row
goes through, in this order:

  1. raw log-probabilities: log_softmax of the model logits as they came in (float32). These are
     what `SampledToken.logprob`, `.rank` and `.top_logprobs` report, like vLLM v1's default
     ("raw_logprobs"): they do not depend on penalties, temperature or filters.
  2. logits processors (params.logits_processors), in list order, row by row;
  3. min_tokens: while fewer than min_tokens tokens were generated, every EOS id and the stop
     token ids are set to -inf so that the sequence cannot end;
  4. repetition penalty over tokens seen in the prompt or the output (positive logits divided by
     the penalty, others multiplied), then frequency and presence penalties over output tokens:
     logit -= frequency_penalty * count + presence_penalty * (count > 0);
  5. greedy rows (and legacy beam rows, whose temperature is 0) take the argmax, ties to the
     lowest id;
  6. random rows: divide by temperature, keep the top_k highest, keep the smallest prefix whose
     probability mass reaches top_p (the best token always stays), drop tokens whose probability
     is below min_p times the best one, then draw one token.

Steps 3-6 are batched tensor operations over all rows that need them; only logits processors
and the final draw of seeded rows loop in Python. The draw uses the exponential race
(argmax of probs / q with q ~ Exp(1), equivalent to sampling from probs): each seeded row
draws its own q from its own generator, so its tokens depend on its seed and its logits alone,
never on the other rows in the batch. Unseeded rows share one draw from the sampler's default
generator (or torch's global one).

With `use_triton` (the model runner sets it for kernel_backend='triton') a call whose rows are
all plain (greedy or temperature only: no logits processors, pending min_tokens, penalties,
top-k, top-p, min-p or per-request seed) runs kernels/sampling.py instead: one fused kernel
reads the logits twice and returns each row's token, raw logprob and rank. Greedy rows give the
same tokens as the torch path; random rows draw from the same distribution through the
Gumbel-max trick with counter-based random numbers, keyed by a seed that a host-side generator
(seeded from the sampler's generator) draws each call, so a run stays reproducible but does not
replay the torch path's random stream. Any other call takes the torch path.

`Sampler.sample` returns its results still on the device (`SamplerTensors`); `.tokens()` reads
them back. Nothing before that read waits for the GPU (small index and parameter tensors go
through runner/engine/device_copy.py), so with async scheduling the model runner queues the
sampler, starts the next step, and reads the tokens only then.

`PromptLogprobs` (and `compute_prompt_logprobs`, one chunk) serves prompt_logprobs: the raw
log-probability and rank of each prompt token given the positions before it, plus the top few
alternatives, from logits that come chunk by chunk.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from runner.engine.device_copy import host_to_device, to_device
from runner.engine.prompt_logprobs import PromptLogprobChunk
from runner.engine.sampling_params import SamplingParams, SamplingType
from runner.engine.scheduler_output import SampledToken

_RANDOM = (SamplingType.RANDOM, SamplingType.RANDOM_SEED)


@dataclass
class SamplingRequest:
    """One row of logits to sample from, with what the sampler needs to know about its sequence."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # tokens this sequence generated before this step
    generator: torch.Generator | None = None  # per-sequence, for seeded requests
    eos_token_ids: tuple[int, ...] = ()  # the model's EOS ids: min_tokens bans them all
    # structured outputs: [W] int32 packed mask of the allowed tokens (bit j of word w: token
    # 32 w + j), made by the scheduler side (runner/engine/structured_output.py)
    grammar_bitmask: Optional[np.ndarray] = None


# What one sampler call returns, one entry per logits row (the DESIGN's "SamplerOutput").
SamplerOutput = list[SampledToken]


@dataclass
class SamplerTensors:
    """One sampler call's results before they are read back: [R] token ids, their raw
    logprobs and ranks, and the top alternatives ([R, k], None when no row asked)."""

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    ranks: torch.Tensor
    top_ids: torch.Tensor | None
    top_vals: torch.Tensor | None
    wanted: list  # params.logprobs of each row

    def to_host(self) -> "SamplerTensors":
        """Start copying to (pinned) host memory without waiting; read them once the copies
        are done (an event recorded after this call)."""
        def copy(t):
            return None if t is None else t.to("cpu", non_blocking=True)
        return SamplerTensors(copy(self.token_ids), copy(self.logprobs), copy(self.ranks),
                              copy(self.top_ids), copy(self.top_vals), self.wanted)

    def tokens(self) -> SamplerOutput:
        """Read back (one transfer per tensor, not one per row) as SampledTokens."""
        top_ids = top_vals = None
        if self.top_ids is not None:
            top_ids, top_vals = self.top_ids.tolist(), self.top_vals.tolist()
        out: SamplerOutput = []
        for i, (tok, lp, rank) in enumerate(zip(self.token_ids.tolist(), self.logprobs.tolist(),
                                                self.ranks.tolist())):
            k = self.wanted[i]
            if k is None:
                top = None
            elif k == 0:
                top = []
            else:
                top = list(zip(top_ids[i][:k], top_vals[i][:k]))
            out.append(SampledToken(token_id=tok, logprob=lp, rank=rank, top_logprobs=top))
        return out


class Sampler:
    """Turns a batch of logits rows into tokens; its only state is the default generator and
    the host-side generator of the fused path's per-call seeds."""

    def __init__(self, generator: torch.Generator | None = None,
                 use_triton: bool = False) -> None:
        self.generator = generator
        self.use_triton = use_triton
        # the fused kernel's per-call seeds: host-side, so drawing one never waits for the GPU
        self._seed_generator = torch.Generator().manual_seed(
            generator.initial_seed() if generator is not None else torch.initial_seed())

    def __call__(self, logits: torch.Tensor, requests: list[SamplingRequest]) -> SamplerOutput:
        return self.sample(logits, requests).tokens()

    def sample(self, logits: torch.Tensor, requests: list[SamplingRequest]) -> SamplerTensors:
        """The rows' tokens and logprobs, left on the device."""
        if logits.dim() != 2 or logits.shape[0] != len(requests):
            raise ValueError(
                f"logits must be [num_rows, vocab] with one row per request, got shape "
                f"{tuple(logits.shape)} for {len(requests)} requests.")
        num_rows, vocab_size = logits.shape
        device = logits.device
        if self.use_triton and num_rows > 0 and _all_plain(requests, vocab_size):
            return self._sample_fused(logits, requests)
        if any(r.grammar_bitmask is not None for r in requests):
            # before the raw logprobs, as vLLM applies the grammar to the logits it samples
            logits = logits.to(torch.float32, copy=True)
            _apply_grammar_bitmasks(logits, requests)
        raw_logprobs = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
        x = logits.to(torch.float32, copy=True)  # [R, V], processed in place below

        _apply_allowed_token_ids(x, requests)
        _apply_bad_words(x, requests)
        _apply_logits_processors(x, requests)
        _apply_min_tokens(x, requests)
        _apply_logit_bias(x, requests)
        _apply_penalties(x, requests)

        token_ids = torch.empty(num_rows, dtype=torch.long, device=device)  # [R]
        is_random = [r.params.sampling_type in _RANDOM for r in requests]
        random_rows = [i for i, rand in enumerate(is_random) if rand]
        greedy_rows = [i for i, rand in enumerate(is_random) if not rand]
        if not random_rows:                   # all greedy: no row gathering
            token_ids = x.argmax(dim=-1)
        elif not greedy_rows:                 # all random
            token_ids = self._sample(x, requests)
        else:
            idx = to_device(greedy_rows, torch.long, device)
            token_ids[idx] = x[idx].argmax(dim=-1)
            idx = to_device(random_rows, torch.long, device)
            token_ids[idx] = self._sample(x[idx], [requests[i] for i in random_rows])

        return _gather_logprobs(raw_logprobs, token_ids, requests)

    def warm_up(self, vocab_size: int, max_rows: int, device: torch.device) -> None:
        """Compile the fused kernel's launch variants (its tile depends on the row count) at
        engine start, as graph capture does for the forward, rather than in the first steps
        that need them. float32 logits, as the model runner hands them over."""
        if not self.use_triton:
            return
        from kernels.sampling import sample as fused_sample
        for rows in sorted({1, max_rows}):
            fused_sample(torch.zeros(rows, vocab_size, device=device),
                         torch.ones(rows, device=device), 2 ** 32)  # an int64 seed, as in use

    def _sample_fused(self, logits: torch.Tensor,
                      requests: list[SamplingRequest]) -> SamplerTensors:
        """Plain rows through kernels/sampling.py: token, raw logprob and rank per row."""
        from kernels.sampling import sample as fused_sample  # Triton only on this path

        temperature = to_device(
            [r.params.temperature if r.params.sampling_type in _RANDOM else 0.0
             for r in requests], torch.float32, logits.device)  # [R], 0 = greedy
        # >= 2^32: always passed as int64, so the kernel keeps one compiled variant
        seed = int(torch.randint(2 ** 32, 2 ** 62, (1,), generator=self._seed_generator))
        token_ids, logprobs, ranks = fused_sample(logits, temperature, seed)
        wanted = [r.params.logprobs for r in requests]
        max_k = min(max((k or 0) for k in wanted), logits.shape[1])
        top_vals = top_ids = None
        if max_k > 0:
            # raw logprobs of the best tokens: logit - logsumexp, the normaliser recovered from
            # the sampled token's logit and logprob
            x = logits.float()
            lse = x.gather(1, token_ids[:, None]) - logprobs[:, None]  # [R, 1]
            top_vals, top_ids = x.topk(max_k, dim=-1)  # [R, max_k] each
            top_vals = top_vals - lse
        return SamplerTensors(token_ids, logprobs, ranks, top_ids, top_vals, wanted)

    def _sample(self, x: torch.Tensor, requests: list[SamplingRequest]) -> torch.Tensor:
        """Temperature, top-k, top-p, min-p and one draw per row; x [r, V] -> token ids [r]."""
        r, vocab_size = x.shape
        device = x.device
        params = [req.params for req in requests]
        temperature = to_device([p.temperature for p in params], torch.float32, device)  # [r]
        x.div_(temperature[:, None])

        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        # top_p >= 1 must keep everything, even when the float cumsum reaches 1.0 early.
        top_p = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]
        need_k = any(k < vocab_size for k in top_k)
        need_p = any(p != float("inf") for p in top_p)
        if need_k or need_p:
            sorted_x, order = x.sort(dim=-1, descending=True)  # [r, V] each
            if need_k:
                positions = torch.arange(vocab_size, device=device)  # [V]
                k = to_device(top_k, torch.long, device)  # [r]
                sorted_x.masked_fill_(positions[None, :] >= k[:, None], float("-inf"))
            if need_p:
                probs = sorted_x.softmax(dim=-1)  # [r, V]
                mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
                p = to_device(top_p, torch.float32, device)  # [r]
                drop = mass_before >= p[:, None]
                drop[:, 0] = False  # the best token always survives
                sorted_x.masked_fill_(drop, float("-inf"))
            x = torch.empty_like(x).scatter_(1, order, sorted_x)

        if any(p.min_p > 0.0 for p in params):
            min_p = to_device([p.min_p for p in params], torch.float32, device)  # [r]
            probs = x.softmax(dim=-1)  # [r, V]
            threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]  # [r, 1]
            x.masked_fill_(probs < threshold, float("-inf"))

        probs = x.softmax(dim=-1)  # [r, V]
        q = torch.empty_like(probs)  # [r, V] exponential race variables
        shared = [i for i, req in enumerate(requests) if req.generator is None]
        if len(shared) == r:                  # one draw for the whole batch, no row gather
            q.exponential_(generator=self.generator)
        elif shared:
            idx = to_device(shared, torch.long, device)
            q[idx] = torch.empty(len(shared), vocab_size, device=device).exponential_(
                generator=self.generator)
        for i, req in enumerate(requests):
            if req.generator is not None:
                # A fresh [V] draw, so the numbers depend only on this row's generator state.
                q[i] = torch.empty(vocab_size, device=device).exponential_(
                    generator=req.generator)
        # Exp(1) can round to 0.0; 0/0 would be NaN, which argmax would pick.
        q.clamp_(min=torch.finfo(q.dtype).tiny)
        return (probs / q).argmax(dim=-1)


class PromptLogprobs:
    """Raw log-probabilities of prompt tokens from logits that come in chunks of rows (the
    model runner bounds the [rows, vocab] float32 transients this way).

    targets [P] on the logits' device: row i scores targets[i]; `add` takes the next rows'
    logits [n, vocab]; `chunk` reads everything back at once: per row the logprob of the
    target, its 1-based rank, the k best ids and logprobs, best first."""

    def __init__(self, targets: torch.Tensor, k: int):
        self.targets = targets
        self.k = k
        self._at = 0
        self._parts: list = []

    def add(self, logits: torch.Tensor) -> None:
        n = logits.shape[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [n, V]
        target_lp = logprobs.gather(1, self.targets[self._at:self._at + n, None])  # [n, 1]
        ranks = (logprobs > target_lp).sum(dim=-1) + 1  # [n]
        k = min(self.k, logprobs.shape[1])
        top = logprobs.topk(k, dim=-1) if k > 0 else None  # [n, k] each
        self._parts.append((target_lp.squeeze(1), ranks, top))
        self._at += n

    def chunk(self) -> PromptLogprobChunk:
        """Everything added, read back at once: one device-to-host copy per array, one wait."""
        if not self._parts:
            return PromptLogprobChunk(np.zeros(0, np.float32), np.zeros(0, np.int64),
                                      np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32))
        lps = torch.cat([p[0] for p in self._parts])                       # [P]
        ranks = torch.cat([p[1] for p in self._parts])                     # [P]
        if self._parts[0][2] is not None:
            vals = torch.cat([p[2].values for p in self._parts])           # [P, k]
            ids = torch.cat([p[2].indices for p in self._parts])           # [P, k]
        else:
            vals = lps.new_zeros((lps.shape[0], 0))
            ids = ranks.new_zeros((lps.shape[0], 0))
        arrays = [lps, ranks, ids, vals]
        if lps.is_cuda:       # four copies to pinned memory, one wait for all of them
            arrays = [t.to("cpu", non_blocking=True) for t in arrays]
            torch.cuda.current_stream(lps.device).synchronize()
        return PromptLogprobChunk(*(t.numpy() for t in arrays))


def compute_prompt_logprobs(
    logits: torch.Tensor, target_token_ids: list[int], num_logprobs: int,
) -> list[tuple[float, int, list[tuple[int, float]]]]:
    """Raw log-probabilities of prompt tokens.

    logits [T, vocab] at prompt positions; row i predicts target_token_ids[i]. Returns, per row,
    (logprob of the target, its 1-based rank, the num_logprobs best (id, logprob), best first).
    """
    if logits.dim() != 2 or logits.shape[0] != len(target_token_ids):
        raise ValueError(
            f"logits must be [T, vocab] with one row per target token, got shape "
            f"{tuple(logits.shape)} for {len(target_token_ids)} targets.")
    acc = PromptLogprobs(torch.tensor(target_token_ids, dtype=torch.long, device=logits.device),
                         num_logprobs)
    if logits.shape[0]:
        acc.add(logits)
    return acc.chunk().entries()


# ---------------------------------------------------------------------- processing steps


def _all_plain(requests: list[SamplingRequest], vocab_size: int) -> bool:
    """Whether every row is greedy or temperature-only sampling without its own generator:
    the rows the fused kernel serves."""
    for r in requests:
        p = r.params
        if (p.logits_processors or r.generator is not None or r.grammar_bitmask is not None
                or p.logit_bias or p.allowed_token_ids is not None or p.bad_words
                or len(r.output_token_ids) < p.min_tokens
                or p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0
                or p.presence_penalty != 0.0 or 0 < p.top_k < vocab_size or p.top_p < 1.0
                or p.min_p > 0.0):
            return False
    return True


def _processor_wants_prompt(fn) -> bool:
    """vLLM accepts fn(output_ids, logits) and fn(prompt_ids, output_ids, logits)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: assume the 2-arg form
        return False
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 3


def _apply_logits_processors(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    for i, req in enumerate(requests):
        processors = req.params.logits_processors
        if not processors:
            continue
        row = x[i]  # [V]
        for fn in processors:
            if _processor_wants_prompt(fn):
                row = fn(req.prompt_token_ids, req.output_token_ids, row)
            else:
                row = fn(req.output_token_ids, row)
        x[i] = row


def _apply_grammar_bitmasks(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    """Structured outputs: tokens outside each row's grammar mask -> -inf."""
    rows = [i for i, r in enumerate(requests) if r.grammar_bitmask is not None]
    words = torch.from_numpy(np.stack([requests[i].grammar_bitmask for i in rows]))  # [r, W]
    bits = (words.long()[:, :, None] >> torch.arange(32)) & 1       # [r, W, 32]
    vocab_size = x.shape[1]
    allowed = bits.reshape(len(rows), -1)[:, :vocab_size].bool()    # [r, V]
    if allowed.shape[1] < vocab_size:     # (a mask narrower than the logits: the rest banned)
        allowed = torch.nn.functional.pad(allowed, (0, vocab_size - allowed.shape[1]))
    idx = to_device(rows, torch.long, x.device)
    x[idx] = x[idx].masked_fill(~host_to_device(allowed, x.device), float("-inf"))


def _apply_allowed_token_ids(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    """allowed_token_ids: every other token -> -inf (vLLM's whitelist, before bad words)."""
    for i, req in enumerate(requests):
        allowed = req.params.allowed_token_ids
        if allowed is None:
            continue
        keep = torch.ones(x.shape[1], dtype=torch.bool)
        keep[torch.tensor(allowed, dtype=torch.long)] = False
        x[i].masked_fill_(host_to_device(keep, x.device), float("-inf"))


def _apply_bad_words(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    """bad_words (as token sequences): the last token of a sequence -> -inf when the tokens
    generated so far end with the rest of it (vLLM 0.24's rule: output tokens only)."""
    rows: list[int] = []
    cols: list[int] = []
    for i, req in enumerate(requests):
        seqs = req.params.bad_words_token_ids
        if not seqs:
            continue
        past = req.output_token_ids
        for ids in seqs:
            prefix = len(ids) - 1
            if prefix > len(past):
                continue
            if prefix == 0 or past[-prefix:] == ids[:prefix]:
                rows.append(i)
                cols.append(ids[-1])
    if rows:
        x[to_device(rows, torch.long, x.device), to_device(cols, torch.long, x.device)] = \
            float("-inf")


def _apply_logit_bias(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    """logit_bias: logit += bias for each listed token (before the penalties, as vLLM)."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, req in enumerate(requests):
        bias = req.params.logit_bias
        if not bias:
            continue
        rows += [i] * len(bias)
        cols += list(bias)
        vals += list(bias.values())
    if rows:
        r = to_device(rows, torch.long, x.device)
        c = to_device(cols, torch.long, x.device)
        x.index_put_((r, c), to_device(vals, torch.float32, x.device), accumulate=True)


def _apply_min_tokens(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    vocab_size = x.shape[1]
    rows: list[int] = []
    cols: list[int] = []
    for i, req in enumerate(requests):
        p = req.params
        if len(req.output_token_ids) >= p.min_tokens:
            continue
        banned = set(p.stop_token_ids) | set(req.eos_token_ids)
        for t in banned:
            if 0 <= t < vocab_size:
                rows.append(i)
                cols.append(t)
    if rows:
        x[to_device(rows, torch.long, x.device), to_device(cols, torch.long, x.device)] = \
            float("-inf")


def _token_counts(token_lists: list[list[int]], vocab_size: int,
                  device: torch.device) -> torch.Tensor:
    """How often each token occurs in each list: [len(token_lists), vocab_size] float32."""
    num_lists = len(token_lists)
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.long)  # [P]
    flat = torch.tensor(list(itertools.chain.from_iterable(token_lists)), dtype=torch.long)  # [N]
    row_ids = torch.repeat_interleave(torch.arange(num_lists), lengths)  # [N]
    # One bincount over row * V + token counts every row at once, with no padding.
    counts = torch.bincount(host_to_device(row_ids * vocab_size + flat, device),
                            minlength=num_lists * vocab_size)
    return counts.view(num_lists, vocab_size).float()


def _apply_penalties(x: torch.Tensor, requests: list[SamplingRequest]) -> None:
    rows = [i for i, r in enumerate(requests)
            if r.params.repetition_penalty != 1.0 or r.params.frequency_penalty != 0.0
            or r.params.presence_penalty != 0.0]
    if not rows:
        return
    device = x.device
    vocab_size = x.shape[1]
    idx = to_device(rows, torch.long, device)
    sub = x[idx]  # [P, V] copy
    reqs = [requests[i] for i in rows]
    output_counts = _token_counts([r.output_token_ids for r in reqs], vocab_size, device)  # [P, V]

    repetition = to_device([r.params.repetition_penalty for r in reqs], torch.float32,
                           device)  # [P]
    if any(r.params.repetition_penalty != 1.0 for r in reqs):
        # Prompts only matter for the repetition penalty; skip counting them for other rows.
        prompts = [r.prompt_token_ids if r.params.repetition_penalty != 1.0 else [] for r in reqs]
        seen = (_token_counts(prompts, vocab_size, device) > 0) | (output_counts > 0)  # [P, V]
        penalty = torch.where(seen, repetition[:, None], torch.ones_like(sub))  # [P, V]
        sub = torch.where(sub > 0, sub / penalty, sub * penalty)

    frequency = to_device([r.params.frequency_penalty for r in reqs], torch.float32,
                          device)  # [P]
    presence = to_device([r.params.presence_penalty for r in reqs], torch.float32,
                         device)  # [P]
    sub -= frequency[:, None] * output_counts + presence[:, None] * (output_counts > 0).float()
    x[idx] = sub


def _gather_logprobs(raw_logprobs: torch.Tensor, token_ids: torch.Tensor,
                     requests: list[SamplingRequest]) -> SamplerTensors:
    """Sampled ids with their raw logprob, rank and the requested top alternatives."""
    chosen = raw_logprobs.gather(1, token_ids[:, None])  # [R, 1]
    ranks = (raw_logprobs > chosen).sum(dim=-1) + 1  # [R]
    wanted = [r.params.logprobs for r in requests]
    max_k = min(max((k or 0) for k in wanted), raw_logprobs.shape[1]) if wanted else 0
    top_vals = top_ids = None
    if max_k > 0:
        top_vals, top_ids = raw_logprobs.topk(max_k, dim=-1)  # [R, max_k] each
    return SamplerTensors(token_ids, chosen.squeeze(1), ranks, top_ids, top_vals, wanted)
