"""Few-shot examples and the prompt around them, as lm-eval 0.4.13 builds them.

    FewshotSampler(pool, sampler, seed)   one Random(seed) per task, drawn from once per eval
        doc in doc order (lm-eval's ContextSampler: `sample(pool, n)`, or n+1 then the eval doc
        removed when the few-shot split is the eval split); first_n takes the pool's head.
    build_messages(...) -> [Message]      system (system_instruction + description), then per
        example a user turn (question + target_delimiter) and an assistant turn (answer +
        fewshot_delimiter), then the eval doc's user turn (+ an assistant gen_prefix).
    to_text(messages)                     plain concatenation: lm-eval's prompt without chat
    chat_messages(messages, multiturn)    the chat form: every turn (--fewshot_as_multiturn) or
                                          all turns folded into one user message

The sampler is advanced once per doc in doc order, so the whole task's examples are drawn when
its docs are listed (runner/tasks/task.py), which makes them independent of the order in which
requests are later built or resumed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence


class FewshotError(ValueError):
    """A few-shot setting the data cannot satisfy; the message is one line."""


class FewshotSampler:
    def __init__(self, pool: Sequence[dict], sampler: str, seed: Optional[int],
                 fewshot_indices: Optional[list] = None, where: str = "task"):
        self.pool = [pool[i] for i in fewshot_indices] if fewshot_indices else list(pool)
        self.sampler = sampler
        self.rnd = random.Random(seed)
        self.where = where

    def sample(self, n: int, eval_doc: Optional[dict]) -> list[int]:
        """Indices into self.pool of the n examples for one eval doc."""
        if n == 0:
            return []
        pool = self.pool
        if not pool:
            raise FewshotError(f"{self.where}: num_fewshot={n} but the few-shot pool is empty")
        if self.sampler == "first_n":
            keep = [i for i, d in enumerate(pool) if eval_doc is None or d != eval_doc]
            if n > len(keep):
                raise FewshotError(f"{self.where}: num_fewshot={n} but only {len(keep)} "
                                   "few-shot docs are available")
            return keep[:n]
        # Random.sample draws the same positions for range(len(pool)) as for pool itself.
        need = n if not eval_doc else n + 1
        if need > len(pool):
            raise FewshotError(f"{self.where}: num_fewshot={n} needs {need} few-shot docs to "
                               f"draw from, the pool has {len(pool)}")
        picked = self.rnd.sample(range(len(pool)), need)
        if eval_doc:
            picked = [i for i in picked if pool[i] != eval_doc][:n]
        if len(picked) < n:  # duplicates of the eval doc were drawn: lm-eval resamples
            rest = [i for i, d in enumerate(pool) if d != eval_doc]
            if n > len(rest):
                raise FewshotError(f"{self.where}: num_fewshot={n} but only {len(rest)} "
                                   "few-shot docs differ from the eval doc")
            picked = [rest[j] for j in self.rnd.sample(range(len(rest)), n)]
        return picked


@dataclass
class Message:
    role: str  # system | user | assistant
    content: str
    delimiter: str = ""  # appended when rendered as plain text


def _needs_delimiter(prefix: str, suffix: str) -> bool:
    return prefix != "" and not (prefix[-1].isspace() or suffix[0].isspace())


def _maybe_delimit(prefix: Optional[str], suffix: Optional[str], delimiter: str = " ") -> str:
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else \
        prefix + delimiter + suffix


def qa_turn(q: Any, choices: Optional[list], answer: Any, gen_prefix: Optional[str],
            target_delimiter: str, fewshot_delimiter: str, where: str) -> list[Message]:
    """One question (and its answer, for an example) as messages: lm-eval's build_qa_turn."""
    if not isinstance(q, str):
        raise FewshotError(f"{where}: doc_to_text gave {type(q).__name__} {q!r}, not text "
                           "(multiple-input tasks, where it gives a choice index, are not "
                           "supported)")
    has_answer = answer is not None and answer != ""
    if has_answer and not gen_prefix:
        delim = target_delimiter
    elif gen_prefix and _needs_delimiter(q, gen_prefix):
        delim = target_delimiter
    else:
        delim = ""
    msgs = [Message("user", q, delim)]
    if has_answer:
        if choices and isinstance(answer, int):
            if not 0 <= answer < len(choices):
                raise FewshotError(f"{where}: the few-shot target index {answer} is outside "
                                   f"its {len(choices)} choices")
            text = choices[answer]
        elif isinstance(answer, list):
            text = answer[0]
        else:
            text = answer
        if not isinstance(text, str):
            raise FewshotError(f"{where}: a few-shot example's target is "
                               f"{type(text).__name__} {text!r}; doc_to_target must give text "
                               "(or an index into doc_to_choice)")
        msgs.append(Message("assistant", _maybe_delimit(gen_prefix, text), fewshot_delimiter))
    elif gen_prefix:
        msgs.append(Message("assistant", gen_prefix))
    return msgs


def system_message(system_instruction: Optional[str], description: str,
                   fewshot_delimiter: str) -> list[Message]:
    text = _maybe_delimit(system_instruction, description, fewshot_delimiter)
    return [Message("system", text)] if text else []


def to_text(messages: list[Message]) -> str:
    return "".join(m.content + m.delimiter for m in messages)


def chat_messages(messages: list[Message], multiturn: bool) -> list[dict]:
    """The messages a chat template renders (lm-eval's multiturn / single-turn forms)."""
    if multiturn:
        return [{"role": m.role, "content": m.content} for m in messages]
    system = messages[0] if messages and messages[0].role == "system" else None
    rest = messages[1:] if system else list(messages)
    tail = []
    if rest and rest[-1].role == "assistant":
        rest, tail = rest[:-1], [rest[-1]]
    user = "".join(m.content + (m.delimiter if i < len(rest) - 1 else "")
                   for i, m in enumerate(rest))
    out = ([{"role": "system", "content": system.content}] if system else [])
    out.append({"role": "user", "content": user})
    out.extend({"role": m.role, "content": m.content} for m in tail)
    return out


def target_delimiter_for(continuation_delim: str, gen_prefix: Optional[str],
                         chat: bool) -> str:
    """The delimiter before each choice: with a chat template it is dropped unless a
    gen_prefix without trailing whitespace precedes the answer (lm-eval's rule)."""
    if not chat:
        return continuation_delim
    return continuation_delim if gen_prefix and not gen_prefix[-1].isspace() else ""
