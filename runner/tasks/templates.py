"""doc_to_text / doc_to_target / doc_to_choice / description: a row -> prompt pieces, as lm-eval.

A value is, in lm-eval's order: an int (itself), a field name of the rows (the row's value), a
`native:NAME` function (runner/tasks/natives.py), a list or mapping of choices, else a Jinja2
template rendered with the row's fields. Templates run in Jinja's immutable sandbox with
StrictUndefined (a field the row lacks is an error naming the key, the template and the row),
keep_trailing_newline, and lm-eval's `regex_replace` filter. Rendered strings are converted as
lm-eval converts them: all digits -> int when the task has choices; a target "[...]" -> list;
a choice template's rendering -> Python literal list.
"""
from __future__ import annotations

import ast
import re
from typing import Any, Callable, Optional

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.tasks.natives import is_native, native


class TemplateFieldError(ValueError):
    """A template or field reference that a row cannot satisfy; the message is one line."""


# The renderings lm-eval turns into an int (its `isdigit()` then ast.literal_eval): the
# integer literals Python reads. Other digit strings ("007", "²", 5000 digits), on which
# lm-eval's literal_eval raises, stay the text they are.
_INT_TEXT = re.compile(r"0|[1-9][0-9]{0,4000}")


def _as_index(out: str) -> Any:
    return int(out) if _INT_TEXT.fullmatch(out) else out


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


class Renderer:
    """Renders one task's templates; `where` names the task in errors."""

    def __init__(self, where: str, features: list[str], has_choices: bool):
        self.where = where
        self.features = set(features)
        self.has_choices = has_choices
        self._env = ImmutableSandboxedEnvironment(undefined=StrictUndefined,
                                                  keep_trailing_newline=True)
        self._env.filters["regex_replace"] = _regex_replace
        self._compiled: dict[str, Any] = {}

    def render(self, template: str, doc: dict, key: str, doc_id: Any) -> str:
        compiled = self._compiled.get(template)
        try:
            if compiled is None:
                compiled = self._compiled[template] = self._env.from_string(template)
            return compiled.render(**doc)
        except UndefinedError as e:
            raise TemplateFieldError(
                f"{self.where}: {key}: {e.message} in template {template!r} (doc {doc_id}; "
                f"its fields: {', '.join(sorted(doc))})") from None
        except TemplateError as e:
            raise TemplateFieldError(f"{self.where}: {key}: template {template!r} failed "
                                     f"({type(e).__name__}: {e}) on doc {doc_id}") from None
        except Exception as e:  # an expression in the template raised (e.g. list.index)
            raise TemplateFieldError(f"{self.where}: {key}: template {template!r} raised "
                                     f"{type(e).__name__}: {e} on doc {doc_id}") from None

    def _field(self, value: str, doc: dict, key: str, doc_id: Any, native_fn) -> Any:
        if is_native(value):
            return native_fn(value, key, self.where)(doc)
        if value in self.features:
            if value not in doc:
                raise TemplateFieldError(f"{self.where}: {key}: doc {doc_id} has no field "
                                         f"{value!r}")
            return doc[value]
        return None

    def text(self, spec: Any, doc: dict, doc_id: Any, key: str = "doc_to_text") -> Any:
        if isinstance(spec, int) and not isinstance(spec, bool):
            return spec
        if not isinstance(spec, str):
            raise TemplateFieldError(f"{self.where}: {key} must be a template, a field name or "
                                     f"an int, got {type(spec).__name__}")
        value = self._field(spec, doc, key, doc_id, native)
        if value is not None or spec in self.features or is_native(spec):
            return value
        out = self.render(spec, doc, key, doc_id)
        return _as_index(out) if self.has_choices else out

    def target(self, spec: Any, doc: dict, doc_id: Any, key: str = "doc_to_target") -> Any:
        if isinstance(spec, int) and not isinstance(spec, bool):
            return spec
        if isinstance(spec, list):
            return list(spec)
        if not isinstance(spec, str):
            raise TemplateFieldError(f"{self.where}: {key} must be a template, a field name, "
                                     f"an int or a list, got {type(spec).__name__}")
        value = self._field(spec, doc, key, doc_id, native)
        if value is not None or spec in self.features or is_native(spec):
            return value
        out = self.render(spec, doc, key, doc_id)
        if self.has_choices and _INT_TEXT.fullmatch(out):
            return int(out)
        if len(out) >= 2 and out[0] == "[" and out[-1] == "]":
            try:
                return ast.literal_eval(out)
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                return out
        return out

    def choices(self, spec: Any, doc: dict, doc_id: Any, key: str = "doc_to_choice") -> list:
        if isinstance(spec, dict):
            out = list(spec.values())
        elif isinstance(spec, list):
            out = list(spec)
        elif isinstance(spec, str):
            value = self._field(spec, doc, key, doc_id, native)
            if value is not None or spec in self.features:
                out = value
            else:
                rendered = self.render(spec, doc, key, doc_id)
                try:
                    out = ast.literal_eval(rendered)
                except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                    raise TemplateFieldError(
                        f"{self.where}: {key}: template {spec!r} rendered {rendered[:80]!r} "
                        f"for doc {doc_id}, not a list of choices") from None
        else:
            raise TemplateFieldError(f"{self.where}: {key} must be a list, a mapping, a field "
                                     f"name or a template, got {type(spec).__name__}")
        if not isinstance(out, (list, tuple)):
            raise TemplateFieldError(f"{self.where}: {key} gave {type(out).__name__} for doc "
                                     f"{doc_id}; it must give a list of choices")
        out = list(out)
        if not out:
            raise TemplateFieldError(f"{self.where}: {key} gave an empty choice list for doc "
                                     f"{doc_id}; every item needs at least one choice")
        if not all(isinstance(c, str) for c in out):
            raise TemplateFieldError(f"{self.where}: {key} gave non-text choices for doc "
                                     f"{doc_id}: {out[:4]!r}")
        return out

    def field_or_template(self, spec: Optional[str], doc: dict, doc_id: Any,
                          key: str) -> Optional[str]:
        """lm-eval's resolve_field (description, gen_prefix): a field's value or a rendering."""
        if not spec:
            return spec
        if spec in doc:
            return doc[spec]
        return self.render(spec, doc, key, doc_id)


def process_results_fn(spec: Optional[str], where: str) -> Optional[Callable]:
    return native(spec, "process_results", where) if spec else None
