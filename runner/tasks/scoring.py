"""Token ids in, log-likelihoods out: lm-eval's tokenization and its vLLM backend's windows.

    encode(tok, text)                     tokenizer.encode with lm-eval's rule: no special
                                          tokens when the text already starts with the prefix
                                          (BOS) token's text, as a chat template renders it
    context_continuation(tok, ctx, cont)  lm-eval's _encode_pair: trailing spaces of the
                                          context move to the continuation; the continuation's
                                          ids are encode(ctx + cont) past len(encode(ctx)); an
                                          empty context becomes the prefix token
    loglikelihood_prompt(ctx, cont, L)    the ids of one scoring request, left-truncated to
                                          L - 1 tokens (the engine keeps one position for the
                                          token it generates), and where the continuation starts
    rolling_windows(ids, prefix, L)       loglikelihood_rolling's disjoint windows of L - 2
                                          predicted tokens (lm-eval's vLLM backend)
    continuation_score(output, ids, start)  (sum of the continuation's prompt logprobs,
                                          is_greedy: every continuation token has rank 1)

`SCORING_PARAMS` is the request every loglikelihood-type item sends: one generated token,
greedy, prompt_logprobs=1 (the target token and the best one, with ranks). With these lengths
lm-eval's `hf` model gives the same numbers when its max_length is L - 2 (docs/tasks.md).
"""
from __future__ import annotations

from typing import Any, Optional

from runner.engine.sampling_params import SamplingParams


class ScoringError(ValueError):
    """An item that cannot be scored as asked; the message is one line."""


def scoring_params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False)


def prefix_token_id(tokenizer) -> int:
    """lm-eval's prefix token (BOS, else EOS): what an empty context conditions on."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise ScoringError("the tokenizer has neither a BOS nor an EOS token to condition an "
                       "empty context on")


def encode(tokenizer, text: str, add_special_tokens: Optional[bool] = None) -> list[int]:
    kwargs: dict[str, Any] = {}
    if add_special_tokens is not None:
        kwargs["add_special_tokens"] = add_special_tokens
    else:
        prefix = tokenizer.decode([prefix_token_id(tokenizer)])
        if prefix and text.startswith(prefix):
            kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def context_continuation(tokenizer, context: str, continuation: str) -> tuple[list, list]:
    if context == "":
        cont = encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def loglikelihood_prompt(ctx: list[int], cont: list[int], max_model_len: int,
                         where: str) -> tuple[list[int], int]:
    """(prompt ids, index of the first continuation token) for one (context, continuation)."""
    if not cont:
        raise ScoringError(f"{where}: the continuation encodes to no tokens")
    limit = max_model_len - 1
    ids = (ctx + cont)[-limit:]
    start = len(ctx) - max(0, len(ctx) + len(cont) - limit)
    if start < 1:
        raise ScoringError(f"{where}: the continuation ({len(cont)} tokens) does not fit "
                           f"max_model_len={max_model_len} with any context; raise "
                           "max_model_len")
    return ids, start


def rolling_windows(token_ids: list[int], prefix: int, max_model_len: int) -> list[tuple]:
    """[(context ids, predicted ids)] covering every token once (lm-eval's rolling windows
    with max_seq_len = max_model_len - 2 and context_len 1, made disjoint)."""
    max_seq_len = max_model_len - 2
    if max_seq_len < 1:
        raise ScoringError(f"max_model_len={max_model_len} is too small for rolling windows")
    if not token_ids:
        return []
    windows = []
    first = min(max_seq_len, len(token_ids))
    windows.append(([prefix] + token_ids[:first - 1], token_ids[:first]))
    predicted = first
    while predicted < len(token_ids):
        n = min(len(token_ids) - predicted, max_seq_len)
        end = predicted + n
        windows.append((token_ids[end - max_seq_len - 1:end - 1], token_ids[end - n:end]))
        predicted += n
    # disjoint: drop the context tokens that the predicted ones repeat
    return [(ctx[:len(ctx) - (len(pred) - 1)], pred) for ctx, pred in windows]


def continuation_score(output, prompt_ids: list[int], start: int,
                       where: str) -> tuple[float, bool]:
    """(log-likelihood, is_greedy) of prompt_ids[start:] from a RequestOutput's
    prompt_logprobs: dicts {token id: Logprob(logprob, rank)}, the first one None."""
    plp = getattr(output, "prompt_logprobs", None)
    if plp is None or len(plp) != len(prompt_ids):
        raise ScoringError(f"{where}: the backend returned no prompt logprobs for the request "
                           f"({0 if plp is None else len(plp)} of {len(prompt_ids)}); it must "
                           "honour SamplingParams.prompt_logprobs")
    total, greedy = 0.0, True
    for tok, entry in zip(prompt_ids[start:], plp[start:]):
        if entry is None or tok not in entry:
            raise ScoringError(f"{where}: prompt logprobs lack token {tok}")
        lp = entry[tok]
        total += float(getattr(lp, "logprob", lp))
        rank = getattr(lp, "rank", None)
        if rank is not None:
            greedy = greedy and rank == 1
        else:  # no rank reported: compare with the best alternative, as lm-eval's vLLM model
            best = max(entry, key=lambda t: float(getattr(entry[t], "logprob", entry[t])))
            greedy = greedy and best == tok
    return total, greedy
