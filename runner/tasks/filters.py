"""Filter pipelines of generate_until tasks: the generations of one doc -> the answer scored.

    Pipeline(name, steps).apply(responses, doc) -> (answer, unmatched)

`responses` are the doc's generations (one per repeat); each step maps the list (lm-eval's
filters are all per doc): regex (findall, the group_select-th match, the first non-empty group
of a tuple, stripped; no match -> fallback "[invalid]"), remove_whitespace (strip), lowercase,
uppercase, map (mapping_dict, default_value), take_first, take_first_k, majority_vote,
multi_choice_regex (lm-eval's fallbacks over the doc's `choices`). `unmatched` is True when a
regex step fell back for this doc; the task counts those and reports them (a regex that never
matches scores 0 on every item, with the count saying why).
"""
from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from typing import Any, Optional

FILTERS = ("regex", "remove_whitespace", "lowercase", "uppercase", "map", "take_first",
           "take_first_k", "majority_vote", "multi_choice_regex")
_DEFAULT_REGEX = r"#### (\-?[0-9\.\,]+)"


class FilterError(ValueError):
    """A filter step the runner cannot build; the message is one line."""


def _regex_pick(regex: re.Pattern, resp: Any, group_select: int, fallback: Any,
                convert: Optional[dict] = None) -> tuple[Any, bool]:
    if not isinstance(resp, str):
        resp = ""
    found = regex.findall(resp)
    if not found:
        return fallback, False
    match = found[group_select]
    if isinstance(match, tuple):
        non_empty = [m for m in match if m]
        if not non_empty:
            return fallback, False
        match = non_empty[0]
    match = match.strip()
    if convert is not None and match in convert:
        match = convert[match]
    return match, True


class _MultiChoice:
    """lm-eval's multi_choice_regex: the pattern, else a choice's text, else ": X" letters."""

    def __init__(self, pattern: str, group_select: int, fallback: str, ignore_case: bool,
                 ignore_punctuation: bool, regexes_to_ignore: Optional[list]):
        self.regex = re.compile(pattern)
        self.group_select, self.fallback = group_select, fallback
        self.ignore_case, self.ignore_punct = ignore_case, ignore_punctuation
        self.ignore = regexes_to_ignore
        self._punct = None

    def _clean(self, text: str) -> str:
        for pat in self.ignore or []:
            text = re.sub(pat, "", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punct:
            if self._punct is None:
                self._punct = dict.fromkeys(i for i in range(sys.maxunicode)
                                            if unicodedata.category(chr(i)).startswith("P"))
            text = text.translate(self._punct)
        return text

    def __call__(self, resps: list, doc: dict) -> tuple[list, bool]:
        to_letter, letters, target = {}, [], {}
        for i, choice in enumerate(doc["choices"]):
            letter = chr(ord("A") + i)
            to_letter[self._clean(choice.strip())] = f"({letter})"
            letters.append(letter)
            target[letter] = f"({letter})"
        by_text = re.compile("|".join(sorted((re.escape(m) for m in to_letter),
                                             key=len, reverse=True)))
        by_letter = re.compile(rf":[\s]*({'|'.join(letters)})")
        out, matched_all = [], True
        for resp in resps:
            m, ok = _regex_pick(self.regex, resp, self.group_select, "")
            if not ok or not m:
                m, ok = _regex_pick(by_text, self._clean(resp if isinstance(resp, str) else ""),
                                    self.group_select, "", to_letter)
            if not ok or not m:
                m, ok = _regex_pick(by_letter, resp, self.group_select, "", target)
            if not ok or not m:
                m, ok = self.fallback, False
            matched_all = matched_all and ok
            out.append(m)
        return out, not matched_all


def _step(step: dict, where: str):
    """A callable (responses, doc) -> (responses, unmatched) for one step."""
    fn = step.get("function")
    kw = {k: v for k, v in step.items() if k != "function"}
    allowed = {"regex": {"regex_pattern", "group_select", "fallback"},
               "multi_choice_regex": {"regex_pattern", "group_select", "fallback",
                                      "ignore_case", "ignore_punctuation",
                                      "regexes_to_ignore"},
               "map": {"mapping_dict", "default_value"}, "take_first_k": {"k"}}
    if fn not in FILTERS:
        raise FilterError(f"{where}: filter function {fn!r} is not supported; allowed: "
                          f"{', '.join(FILTERS)}")
    extra = set(kw) - allowed.get(fn, set())
    if extra:
        raise FilterError(f"{where}: filter {fn} takes no {sorted(extra)}")
    if fn in ("regex", "multi_choice_regex"):
        pattern = kw.get("regex_pattern", _DEFAULT_REGEX)
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise FilterError(f"{where}: regex_pattern {pattern!r} is not a valid regex ({e})"
                              ) from None
        group_select = kw.get("group_select", 0)
        fallback = kw.get("fallback", "[invalid]")
        if fn == "multi_choice_regex":
            return _MultiChoice(pattern, group_select, fallback, bool(kw.get("ignore_case")),
                                bool(kw.get("ignore_punctuation")), kw.get("regexes_to_ignore"))

        def regex_step(resps, doc):
            picked = [_regex_pick(regex, r, group_select, fallback) for r in resps]
            return [p for p, _ in picked], not all(ok for _, ok in picked)
        return regex_step
    if fn == "remove_whitespace":
        return lambda resps, doc: ([r.strip() for r in resps], False)
    if fn == "lowercase":
        return lambda resps, doc: ([r.lower() for r in resps], False)
    if fn == "uppercase":
        return lambda resps, doc: ([r.upper() for r in resps], False)
    if fn == "map":
        mapping, default = kw.get("mapping_dict") or {}, kw.get("default_value")
        return lambda resps, doc: ([mapping.get(r, default) for r in resps], False)
    if fn == "take_first":
        return lambda resps, doc: (resps[0], False)
    if fn == "take_first_k":
        k = kw.get("k")
        if not isinstance(k, int) or k < 1:
            raise FilterError(f"{where}: take_first_k needs k >= 1")

        def first_k(resps, doc):
            if len(resps) < k:
                raise FilterError(f"{where}: take_first_k k={k} but the doc has "
                                  f"{len(resps)} generations; raise repeats")
            return resps[:k], False
        return first_k
    # majority_vote: the most common response (first seen on ties), as a one-item list
    return lambda resps, doc: ([Counter(resps).most_common(1)[0][0]], False)


class Pipeline:
    def __init__(self, name: str, steps: list[dict], where: str):
        self.name = name
        self.steps = [_step(s, f"{where}: filter {name}") for s in steps]

    def apply(self, responses: list, doc: dict) -> tuple[Any, bool]:
        value: Any = list(responses)
        unmatched = False
        for step in self.steps:
            value, miss = step(value, doc)
            unmatched = unmatched or miss
        return value, unmatched

