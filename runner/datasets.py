r"""Dataset sources and prompt formatting: a dataset config in, a list of Examples out.

Data flow:

    cfg.source --parse_source--> {"scheme": "builtin" | "jsonl" | "hf", ...}
      -> raw rows (builtin: runner/data/NAME.jsonl; jsonl: one JSON object per line;
         hf: runner/hf_source.py: a save_to_disk folder, a local file, the hub)
      -> row selection (random.Random(seed) permutation when shuffle, then the first `limit`,
         the run's top-level limit)
      -> preset ("squad" or "generic", "auto" picks by columns) -> prompt or chat messages,
         references, id
      -> (list[Example], DatasetInfo); DatasetInfo.fingerprint hashes the selected rows so the
         manifest pins exactly which data a run saw.

Templates (dataset.template) are str.format templates over a row's fields. Their escapes are
decoded, so a template typed on the command line means what it says: `\n` is a newline, `\t`
a tab and `\\` one backslash (so `\\n` is a literal backslash-n, which earns a warning: a prompt
with a literal backslash-n is almost always a template that was meant to break the line).

The config is any object with the dataset fields (a schemas dataclass, an OmegaConf node or a
plain dict); missing fields take the defaults below. Every problem with the data is raised as
DatasetError (a ValueError) naming the file and line, or the dataset and row, that caused it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from runner.metrics import get_metric

log = logging.getLogger("runner")

KNOWN_SCHEMES = ("builtin", "jsonl", "hf")
PRESETS = ("auto", "squad", "generic")
SQUAD_COLUMNS = ("context", "question", "answers")

# Wording checked against SmolLM2-135M-Instruct (its Q4_1 GGUF, greedy, 20 squad_mini items):
# both forms lead with the instruction and end with "Answer:"; in the chat form that drew shorter
# replies than a trailing "answer with just the span" line (F1 27 against 15).
SQUAD_PROMPT = (
    "Answer the question using a short span copied from the passage.\n\n"
    "Passage: {context}\nQuestion: {question}\nAnswer:"
)
SQUAD_CHAT_USER = (
    "Read the passage and answer the question with just a few words copied from it.\n\n"
    "Passage: {context}\nQuestion: {question}\nAnswer:"
)

# The defaults of the dataset config; the schema in runner/schemas.py carries the same ones.
_CFG_DEFAULTS: dict[str, Any] = {
    "source": "builtin:squad_mini", "hf_config": None, "split": None, "preset": "auto",
    "prompt_field": None, "reference_field": None, "id_field": None, "template": None,
    "chat": False, "system_prompt": None, "shuffle": False, "seed": 0,
    "metric": None,
}
# Generic rows with no prompt_field/reference_field in the config fall back to these names.
_GENERIC_PROMPT_FIELD = "prompt"
_GENERIC_REFERENCE_FIELDS = ("references", "reference", "answers", "answer", "target")


class DatasetError(ValueError):
    """A dataset that cannot be read or turned into examples; the message names the culprit."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A jsonl source whose file does not exist (catchable as ValueError or FileNotFoundError)."""


@dataclass
class Example:
    """One evaluation item: exactly one of prompt / messages is set, depending on cfg.chat."""

    id: str
    prompt: str | None
    messages: list[dict] | None
    references: list[str]
    fields: dict


@dataclass
class DatasetInfo:
    """What the manifest records about the data a run saw."""

    source: str
    num_rows_total: int
    num_examples: int
    fingerprint: str
    metric: str
    warnings: tuple = ()


# ---------------------------------------------------------------------------------------------
# Source parsing


def parse_source(spec: str) -> dict:
    """Split a source spec into its parts.

    "builtin:NAME"            -> {"scheme": "builtin", "name": NAME}
    "jsonl:PATH"              -> {"scheme": "jsonl", "path": PATH}  (PATH is taken whole)
    "hf:NAME[:CONFIG[:SPLIT]]" -> {"scheme": "hf", "name": NAME, "config": CONFIG|None,
                                   "split": SPLIT|None}; an empty CONFIG ("hf:x::test") is None.
    NAME may contain "/" (hub ids, local folders).
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise DatasetError(
            f"dataset source {spec!r} has no scheme; expected one of "
            f"{', '.join(s + ':...' for s in KNOWN_SCHEMES)} (e.g. hf:squad, jsonl:data.jsonl, "
            "builtin:squad_mini)"
        )
    scheme, rest = spec.split(":", 1)
    if scheme not in KNOWN_SCHEMES:
        raise DatasetError(
            f"unknown dataset scheme {scheme!r} in {spec!r}; known schemes: "
            f"{', '.join(KNOWN_SCHEMES)}"
        )
    if not rest:
        raise DatasetError(f"dataset source {spec!r} names no dataset after '{scheme}:'")
    if scheme == "jsonl":
        return {"scheme": "jsonl", "path": rest}
    if scheme == "builtin":
        return {"scheme": "builtin", "name": rest}
    parts = rest.split(":")
    if len(parts) > 3:
        raise DatasetError(
            f"dataset source {spec!r} has too many ':' fields; expected hf:NAME[:CONFIG[:SPLIT]]"
        )
    name, config, split = (parts + [None, None])[:3]
    if not name:
        raise DatasetError(f"dataset source {spec!r} names no dataset after 'hf:'")
    return {"scheme": "hf", "name": name, "config": config or None, "split": split or None}


def builtin_names() -> list[str]:
    """Names usable as builtin:NAME: the .jsonl files shipped in runner/data."""
    data = resources.files("runner") / "data"
    return sorted(p.name[: -len(".jsonl")] for p in data.iterdir() if p.name.endswith(".jsonl"))


def builtin_path(name: str) -> Path:
    known = builtin_names()
    if name not in known:
        raise DatasetError(f"unknown builtin dataset {name!r}; known: {', '.join(known)}")
    return Path(str(resources.files("runner") / "data" / f"{name}.jsonl"))


# ---------------------------------------------------------------------------------------------
# Raw rows. A source gives its row count, columns, a rows-by-index accessor and row labels, so
# that only the selected rows of a large hf dataset are materialized.


@dataclass
class RawSource:
    num_rows: int
    columns: list[str]
    get_rows: Callable[[list[int]], list[dict]]  # row indices -> those rows, in that order
    label: Callable[[int], str]  # where row i came from, for error messages


# Rows nested deeper than this are refused with a message (json.loads would otherwise end in a
# bare RecursionError near Python's own limit).
MAX_JSON_DEPTH = 100


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, iteratively (stops counting past `limit`)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_jsonl_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, row) of every non-blank line; DatasetError naming the file, line and fix.

    A file that is not UTF-8, a line that is not JSON, is not an object or nests deeper than
    MAX_JSON_DEPTH: each is one line saying where and what to do."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "not found"
        raise DatasetFileNotFoundError(f"dataset file {what}: {path}")
    rows: list[tuple[int, dict]] = []
    try:
        f = open(p, "rb")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the dataset file ({e.strerror or e}); check "
                           "its permissions") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a BOM, as some editors write
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"{path}: line {lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"{path}: line {lineno}: bad JSON: {e.msg} (column {e.colno}); each line "
                    "must be one JSON object") from None
            except RecursionError:
                raise DatasetError(
                    f"{path}: line {lineno}: JSON nested too deeply to read; flatten the row "
                    f"(at most {MAX_JSON_DEPTH} levels)") from None
            if not isinstance(row, dict):
                raise DatasetError(
                    f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}; "
                    "write one object per line")
            if _depth(row, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
                raise DatasetError(
                    f"{path}: line {lineno}: JSON nested more than {MAX_JSON_DEPTH} levels deep; "
                    "flatten the row")
            if "\\u" in line and lone_surrogate(row):
                raise DatasetError(
                    f"{path}: line {lineno}: a \\u escape is half of a UTF-16 surrogate pair "
                    "(not text); write the character itself or its full pair")
            rows.append((lineno, row))
    return rows


def lone_surrogate(value: Any) -> bool:
    """Whether parsed JSON holds a string with half a surrogate pair (json.loads turns the
    escape "\\ud800" into a str that cannot be encoded: no tokenizer or Arrow reads it)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_jsonl(path: str) -> RawSource:
    numbered = read_jsonl_rows(path)
    if not numbered:
        raise DatasetError(f"dataset file has no rows: {path}")
    rows = [row for _, row in numbered]
    line_numbers = [n for n, _ in numbered]
    return RawSource(
        num_rows=len(rows),
        columns=list(rows[0]),
        get_rows=lambda idx: [rows[i] for i in idx],
        label=lambda i: f"{path}: line {line_numbers[i]}",
    )


def _read_source(parsed: dict, hf_config: str | None, split: str | None) -> RawSource:
    if parsed["scheme"] == "builtin":
        return _read_jsonl(str(builtin_path(parsed["name"])))
    if parsed["scheme"] == "jsonl":
        return _read_jsonl(parsed["path"])
    from runner.hf_source import read_hf

    config = _merge_setting("hf_config", parsed["config"], hf_config)
    split = _merge_setting("split", parsed["split"], split)
    return read_hf(parsed["name"], config, split)


def _merge_setting(key: str, from_source: str | None, from_cfg: str | None) -> str | None:
    # "hf:squad:plain_text:train" and dataset.split=train may both be given; they must agree.
    if from_source and from_cfg and from_source != from_cfg:
        raise DatasetError(
            f"dataset {key} given twice with different values: {from_source!r} in the source "
            f"spec and {from_cfg!r} in the config"
        )
    return from_source or from_cfg


# ---------------------------------------------------------------------------------------------
# Rows to examples


def _cfg_get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        value = cfg.get(key, _CFG_DEFAULTS[key])
    else:
        value = getattr(cfg, key, _CFG_DEFAULTS[key])
    # An explicit None (e.g. "dataset.seed=null") means "use the default" for every field.
    return _CFG_DEFAULTS[key] if value is None else value


_ESCAPES = re.compile(r"\\(\\|n|t)")


def decode_template(template: str | None) -> str | None:
    """`\\n` -> newline, `\\t` -> tab, `\\\\` -> one backslash; other text unchanged."""
    if template is None:
        return None
    return _ESCAPES.sub(lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], template)


LITERAL_NEWLINE = "\\n"


def _template_fields(template: str) -> list[str]:
    """Top-level field names a str.format template reads ("{a[b]}" and "{a.b}" read "a")."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DatasetError(f"bad prompt template {template!r}: {e}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        top = field.split(".", 1)[0].split("[", 1)[0]
        if top == "" or top.isdigit():
            raise DatasetError(
                f"prompt template {template!r} uses a positional field {{{field}}}; "
                "name a row field instead, e.g. {question}"
            )
        names.append(top)
    return names


def _format_template(template: str, row: dict, label: str) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise DatasetError(
            f"{label}: prompt template uses field {e.args[0]!r} that the row does not have; "
            f"row fields: {sorted(row)}"
        ) from None
    except (IndexError, AttributeError, TypeError, ValueError) as e:
        raise DatasetError(f"{label}: prompt template {template!r} failed: {e}") from None


def _as_references(value: Any, field: str, label: str) -> list[str]:
    """A reference field as a deduplicated list of strings, order kept."""
    if isinstance(value, Mapping) and "text" in value:
        value = value["text"]  # SQuAD-style answers dict
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise DatasetError(
            f"{label}: field {field!r} must be a string or a list of strings, "
            f"got {type(value).__name__}"
        )
    refs: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise DatasetError(
                f"{label}: field {field!r} holds a {type(item).__name__}; expected strings"
            )
        text = str(item)
        if text not in refs:
            refs.append(text)
    if not refs:
        raise DatasetError(f"{label}: field {field!r} holds no reference")
    return refs


def _require(row: dict, field: str, label: str, why: str) -> Any:
    if field not in row:
        raise DatasetError(
            f"{label}: missing field {field!r} ({why}); the row has fields: {sorted(row)}"
        )
    return row[field]


@dataclass
class _Plan:
    """How every row turns into an Example, decided once from the config and the columns."""

    preset: str
    prompt_field: str | None
    reference_field: str | None
    id_field: str | None
    template: str | None
    chat: bool
    system_prompt: str | None


def _plan(cfg: Any, columns: list[str], source: str) -> _Plan:
    preset = _cfg_get(cfg, "preset")
    if preset not in PRESETS:
        raise DatasetError(
            f"unknown dataset preset {preset!r}; known presets: {', '.join(PRESETS)}"
        )
    if preset == "auto":
        preset = "squad" if all(c in columns for c in SQUAD_COLUMNS) else "generic"
    prompt_field = _cfg_get(cfg, "prompt_field")
    reference_field = _cfg_get(cfg, "reference_field")
    id_field = _cfg_get(cfg, "id_field")
    template = decode_template(_cfg_get(cfg, "template"))
    where = f"dataset {source!r}"

    for key, field in (("prompt_field", prompt_field), ("reference_field", reference_field),
                       ("id_field", id_field)):
        if field is not None and field not in columns:
            raise DatasetError(
                f"{key} {field!r} is not a field of {where}; available fields: {sorted(columns)}"
            )
    if template is not None:
        for field in _template_fields(template):
            if field not in columns:
                raise DatasetError(
                    f"prompt template uses field {field!r} that {where} does not have; "
                    f"available fields: {sorted(columns)}"
                )

    if preset == "generic":
        if template is None and prompt_field is None:
            if _GENERIC_PROMPT_FIELD not in columns:
                raise DatasetError(
                    f"{where} (generic preset) needs dataset.template or dataset.prompt_field; "
                    f"available fields: {sorted(columns)}"
                )
            prompt_field = _GENERIC_PROMPT_FIELD
        if reference_field is None:
            found = [c for c in _GENERIC_REFERENCE_FIELDS if c in columns]
            if not found:
                raise DatasetError(
                    f"{where} (generic preset) needs dataset.reference_field; "
                    f"available fields: {sorted(columns)}"
                )
            reference_field = found[0]
    if id_field is None and "id" in columns:
        id_field = "id"
    return _Plan(preset, prompt_field, reference_field, id_field, template,
                 bool(_cfg_get(cfg, "chat")), _cfg_get(cfg, "system_prompt"))


def _to_example(row: dict, index: int, label: str, plan: _Plan) -> Example:
    if plan.preset == "squad":
        context = _require(row, "context", label, "the squad preset reads it")
        question = _require(row, "question", label, "the squad preset reads it")
        answers = _require(row, "answers", label, "the squad preset reads it")
        for name, value in (("context", context), ("question", question)):
            if not isinstance(value, str):
                raise DatasetError(f"{label}: field {name!r} must be a string, "
                                   f"got {type(value).__name__}")
    if plan.reference_field is not None:
        ref_field = plan.reference_field
        references = _as_references(_require(row, ref_field, label, "the references"),
                                    ref_field, label)
    else:
        references = _as_references(answers, "answers", label)

    # The prompt body: a template wins, then a prompt field, then the preset's own wording.
    if plan.template is not None:
        body = _format_template(plan.template, row, label)
    elif plan.prompt_field is not None:
        body = _require(row, plan.prompt_field, label, "the prompt")
        if not isinstance(body, str):
            raise DatasetError(f"{label}: prompt field {plan.prompt_field!r} must be a string, "
                               f"got {type(body).__name__}")
    else:
        fmt = SQUAD_CHAT_USER if plan.chat else SQUAD_PROMPT
        body = fmt.format(context=context, question=question)

    if plan.chat:
        messages = []
        if plan.system_prompt:
            messages.append({"role": "system", "content": plan.system_prompt})
        messages.append({"role": "user", "content": body})
        prompt = None
    else:
        # A plain prompt has no system slot; the system prompt leads the text instead.
        prompt = f"{plan.system_prompt}\n\n{body}" if plan.system_prompt else body
        messages = None

    if plan.id_field is not None:
        ex_id = str(_require(row, plan.id_field, label, "the example id"))
    else:
        ex_id = str(index)
    return Example(id=ex_id, prompt=prompt, messages=messages, references=references,
                   fields=row)


def _select(num_rows: int, limit: int | None, shuffle: bool, seed: int) -> list[int]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or null, got {limit!r}")
    indices = list(range(num_rows))
    if shuffle:
        random.Random(seed).shuffle(indices)
    return indices if limit is None else indices[:limit]


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes_sha256__": hashlib.sha256(value).hexdigest()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot fingerprint a value of type {type(value).__name__}")


def fingerprint_rows(rows: list[dict]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact, UTF-8) of `rows`, in order."""
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_examples(cfg: Any, limit: int | None = None) -> tuple[list[Example], DatasetInfo]:
    """Read the source in `cfg`, select rows (the first `limit`), format prompts."""
    source = _cfg_get(cfg, "source")
    parsed = parse_source(source)
    raw = _read_source(parsed, _cfg_get(cfg, "hf_config"), _cfg_get(cfg, "split"))
    plan = _plan(cfg, raw.columns, source)
    metric = _cfg_get(cfg, "metric") or ("squad" if plan.preset == "squad" else "exact_match")
    get_metric(metric)  # an unknown metric fails here, before any generation

    indices = _select(raw.num_rows, limit, bool(_cfg_get(cfg, "shuffle")),
                      int(_cfg_get(cfg, "seed")))
    rows = raw.get_rows(indices)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for index, row in zip(indices, rows):
        label = raw.label(index)
        ex = _to_example(row, index, label, plan)
        # Predictions are keyed by id (resume skips finished ids), so ids must be unique.
        if ex.id in seen:
            raise DatasetError(
                f"{label}: duplicate example id {ex.id!r} (first at {seen[ex.id]}); "
                "set dataset.id_field to a unique field"
            )
        seen[ex.id] = label
        examples.append(ex)
    warnings = []
    literal = next((ex for ex in examples if plan.template is not None
                    and LITERAL_NEWLINE in (ex.prompt or ex.messages[-1]["content"])), None)
    if literal is not None:
        warnings.append(f"dataset.template renders a literal backslash-n in item {literal.id!r} "
                        "(and maybe others); write \\n in the template for a line break")
        log.warning(warnings[-1])
    info = DatasetInfo(source=source, num_rows_total=raw.num_rows, num_examples=len(examples),
                       fingerprint=fingerprint_rows(rows), metric=metric,
                       warnings=tuple(warnings))
    return examples, info
