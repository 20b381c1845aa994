"""The allow-list of functions a task config may name (`native:NAME`): the preprocessing that
the shipped presets need, written for this project with lm-eval's behaviour.

Task files run no code. In lm-eval a few keys take a Python function (`!function utils.f`);
here those keys take `native:NAME` and NAME must be one of NATIVES, each serving one key:

    process_docs: native:hellaswag_process_docs     rows -> rows (lm-eval hellaswag's utils)
    doc_to_target: native:wikitext_detokenizer      row -> text (lm-eval wikitext's)
    process_results: native:wikitext_process_results row, loglikelihood -> metric items

A user's lm-eval file that says `!function utils.process_docs` is accepted only when the module
file it names is byte for byte the one lm-eval 0.4.13 ships (LMEVAL_FUNCTION_FILES, by sha256):
the reference then maps to the native twin and nothing from the file is imported or run.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

NATIVE_PREFIX = "native:"


# --------------------------------------------------------------------------- hellaswag


def _hellaswag_clean(text: str) -> str:
    # WikiHow rows carry "[title]"-style markers; lm-eval turns the title marker into a
    # sentence break and drops the other bracketed markers.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_process_docs(rows: list[dict]) -> list[dict]:
    """Each row gains `query` (activity label + both context halves), `choices` (the cleaned
    endings) and `gold` (the label as an int); the original columns stay, as Dataset.map."""
    out = []
    for row in rows:
        context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        out.append({**row,
                    "query": _hellaswag_clean(row["activity_label"] + ": " + context),
                    "choices": [_hellaswag_clean(e) for e in row["endings"]],
                    "gold": int(row["label"])})
    return out


# --------------------------------------------------------------------------- wikitext

# The word-level tokenization of wikitext undone, step by step, in lm-eval's order.
_WIKITEXT_STEPS: tuple[tuple[str, str, str], ...] = (
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    ("str", " @-@ ", "-"), ("str", " @,@ ", ","), ("str", " @.@ ", "."),
    ("str", " : ", ": "), ("str", " ; ", "; "), ("str", " . ", ". "), ("str", " ! ", "! "),
    ("str", " ? ", "? "), ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"), ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"), ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="), ("str", "= = =", "==="), ("str", "= =", "=="),
    ("str", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    ("str", " \n", "\n"), ("str", "\n ", "\n"), ("str", " N ", " 1 "), ("str", " 's", "'s"),
)


def wikitext_detokenizer(row: dict) -> str:
    text = row["page"]
    for kind, old, new in _WIKITEXT_STEPS:
        text = text.replace(old, new) if kind == "str" else re.sub(old, new, text)
    return text


def wikitext_process_results(row: dict, loglikelihood: float) -> dict:
    """Perplexity items counted on the page *before* detokenization, as lm-eval counts them."""
    words = len(re.split(r"\s+", row["page"]))
    n_bytes = len(row["page"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words),
            "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Native:
    key: str  # the config key it serves
    fn: Callable


NATIVES: dict[str, Native] = {
    "hellaswag_process_docs": Native("process_docs", hellaswag_process_docs),
    "wikitext_detokenizer": Native("doc_to_target", wikitext_detokenizer),
    "wikitext_process_results": Native("process_results", wikitext_process_results),
}

# sha256 of a module file lm-eval 0.4.13 ships -> {function name in it: native twin}.
LMEVAL_FUNCTION_FILES: dict[str, dict[str, str]] = {
    # lm_eval/tasks/hellaswag/utils.py
    "07d23b60b28f2a4f658dcf8440623a63fe6644854ce9b846a114dde980dc1214":
        {"process_docs": "hellaswag_process_docs"},
    # lm_eval/tasks/wikitext/preprocess_wikitext.py
    "a44020374b172159bf5be80a64d2c4194c9d5c77284f696ac666361338c8da7d":
        {"wikitext_detokenizer": "wikitext_detokenizer",
         "process_results": "wikitext_process_results"},
}


class NativeError(ValueError):
    """A `native:` name that is not on the allow-list or not for this key."""


def is_native(value) -> bool:
    return isinstance(value, str) and value.startswith(NATIVE_PREFIX)


def native(value: str, key: str, where: str) -> Callable:
    """The function `native:NAME` names for config key `key`; `where` prefixes the error."""
    name = value[len(NATIVE_PREFIX):]
    entry = NATIVES.get(name)
    allowed = sorted(f"{NATIVE_PREFIX}{n}" for n, e in NATIVES.items() if e.key == key)
    if entry is None or entry.key != key:
        raise NativeError(f"{where}: {key}: {value!r} is not a native function for {key}; "
                          f"allowed: {', '.join(allowed) or 'none'}")
    return entry.fn


def native_for_function_ref(module_file: Path, function: str) -> Optional[str]:
    """`native:NAME` for `!function module.function` when module_file is lm-eval's own."""
    try:
        digest = hashlib.sha256(module_file.read_bytes()).hexdigest()
    except OSError:
        return None
    name = LMEVAL_FUNCTION_FILES.get(digest, {}).get(function)
    return f"{NATIVE_PREFIX}{name}" if name else None
