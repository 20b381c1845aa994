"""The `sampling` group against a task's generation_kwargs: lm-eval's --gen_kwargs rule.

For a generate_until task, `generation(task_gen, sampling, repeats, eos)` gives the effective
SamplingParams keyword arguments:

    sampling.temperature  null -> the task's: 0 when do_sample is false, else its temperature
                                  (0.0 when it has none, as lm-eval normalizes it)
    sampling.max_tokens   null -> the task's max_gen_toks (256 when it has none)
    sampling.stop         null or [] -> the task's until
    every other field     as set (n, top_p, seed, penalties, ...); repeats > 1 sets n
    + the tokenizer's EOS text appended to the stop strings (lm-eval does the same)

A value set in `sampling` always wins; these values are written into every prediction record
(`params`) and into Task.info(), so a rerun from the recipe produces them again.

A task that generates nothing (multiple_choice, loglikelihood, loglikelihood_rolling) scores
with fixed greedy prompt-logprob requests; `inapplicable(sampling)` lists the settings that
would then be accepted and ignored: any value other than null, SamplingConfig's default, or,
for temperature, 0 (greedy, which is how those tasks score).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

SAMPLING_EPS = 1e-5
# SamplingConfig fields forwarded to SamplingParams as they are
_PASS_THROUGH = ("best_of", "presence_penalty", "frequency_penalty", "repetition_penalty",
                 "top_p", "top_k", "min_p", "use_beam_search", "length_penalty",
                 "early_stopping", "stop_token_ids", "ignore_eos", "min_tokens", "logprobs",
                 "prompt_logprobs", "skip_special_tokens")


class SamplingRuleError(ValueError):
    """Sampling settings that cannot apply to the task; the message is one line."""


def _fields(sampling) -> dict:
    if dataclasses.is_dataclass(sampling):
        return {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling)}
    return dict(sampling)


def task_temperature(task_gen: dict) -> float:
    if task_gen.get("do_sample") is False:
        return 0.0
    return float(task_gen.get("temperature") or 0.0)


def generation(task_gen: dict, sampling, repeats: int, eos_text: Optional[str],
               where: str) -> dict[str, Any]:
    """Effective SamplingParams kwargs (without the per-item seed) and `until` (for the
    post-hoc cut lm-eval applies to generations)."""
    s = _fields(sampling)
    until = list(s["stop"]) if s.get("stop") else list(task_gen["until"])
    if eos_text and eos_text not in until:
        until.append(eos_text)
    temperature = s["temperature"] if s.get("temperature") is not None \
        else task_temperature(task_gen)
    max_tokens = s["max_tokens"] if s.get("max_tokens") is not None \
        else int(task_gen["max_gen_toks"])
    n = s.get("n", 1)
    if repeats > 1:
        if n not in (1, repeats):
            raise SamplingRuleError(f"{where}: sampling.n={n} conflicts with the task's "
                                    f"repeats={repeats}; leave sampling.n at 1")
        n = repeats
    if s.get("use_beam_search"):
        raise SamplingRuleError(f"{where}: beam search (sampling.use_beam_search=true) cannot "
                                "run a generate_until task: it stops on strings (until); use "
                                "sampling=greedy or sampling=random")
    params = {k: s[k] for k in _PASS_THROUGH if k in s}
    params.update(n=n, temperature=float(temperature), max_tokens=int(max_tokens),
                  stop=[u for u in until if u], seed=s.get("seed"))
    return {"params": params, "until": until}


def inapplicable(sampling, defaults) -> list[str]:
    """`sampling.X=V` for every setting a loglikelihood-type task would have to ignore;
    `defaults` is SamplingConfig() (the values that mean "not set")."""
    s, d = _fields(sampling), _fields(defaults)
    out = []
    for name, value in s.items():
        if value is None or value == d.get(name):
            continue
        if name == "temperature" and value < SAMPLING_EPS:
            continue
        if name == "stop" and not value:
            continue
        out.append(f"sampling.{name}={value!r}")
    return out
