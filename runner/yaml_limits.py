"""Reading a YAML file a user hands the runner (task files, recipes) as one line on any fault.

    read_yaml_text(path, error)                -> the file's text; `error` (a ValueError class)
                                                  for a missing file, a directory, no
                                                  permission, bytes that are not UTF-8 (line)
    load_bounded(text, where, error, loader)   -> the document, composed and checked before any
                                                  object is built: nested past MAX_DEPTH, an
                                                  alias that holds itself or aliases that
                                                  multiply past MAX_NODES values is `error`
                                                  naming the line; YAML syntax errors are left
                                                  to the caller (yaml.YAMLError)
    yaml_error(e, text) -> (line, problem)     where a syntax error is, for the caller's line

Without the bounds, PyYAML builds a self-referencing alias (`a: &x [*x]`) that every recursive
walk ends in RecursionError on, a few hundred bytes of aliases that expand to hundreds of
millions of values, a document nested past Python's stack is a RecursionError of its own, and
a few KiB of `[[[[...` take it minutes (its scanner is quadratic in the flow depth).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

# Far above any real file (lm-eval 0.4.13's largest task file: 765 values, 8 levels deep).
MAX_DEPTH = 100
MAX_NODES = 100_000


def read_yaml_text(path: Path, error: type, what: str = "file") -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}; name the YAML file") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e}); check its "
                    "permissions") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the file as "
                    "UTF-8") from None


def yaml_error(e: yaml.YAMLError, text: str) -> tuple[Optional[int], str]:
    """(line, problem) of a YAML syntax error. A construct left open to the end of the file
    (`[unclosed`) is reported at the line it opened, not past the last line."""
    mark = getattr(e, "problem_mark", None)
    context = getattr(e, "context_mark", None)
    if mark is not None and context is not None and mark.index >= len(text.rstrip()):
        mark = context
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return (mark.line + 1 if mark is not None else None), problem


class _TooDeep(Exception):
    pass


class _FlowLimit:
    """Stops the scanner at the MAX_DEPTH-th open `[` / `{`: PyYAML's scanner and parser take
    time quadratic in the flow depth (4000 brackets: 13 s), so the depth is cut while
    scanning, before that work is done."""

    def fetch_flow_collection_start(self, token_class):
        super().fetch_flow_collection_start(token_class)
        if self.flow_level > MAX_DEPTH:
            raise _TooDeep


def load_bounded(text: str, where: Any, error: type, loader: type = yaml.SafeLoader) -> Any:
    """yaml.load(text, Loader=loader) within MAX_DEPTH and MAX_NODES (see the module doc)."""
    parser = type(f"Bounded{loader.__name__}", (_FlowLimit, loader), {})(text)
    try:
        try:
            node = parser.get_single_node()
        except (RecursionError, _TooDeep):
            raise error(f"{where}:{parser.line + 1}: nested too deeply (at most {MAX_DEPTH} "
                        "levels); flatten it") from None
        if node is None:
            return None
        _check_nodes(node, where, error)
        return parser.construct_document(node)
    finally:
        parser.dispose()


def _check_nodes(root: yaml.Node, where: Any, error: type) -> None:
    count, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise error(f"{where}:{line}: nested more than {MAX_DEPTH} levels deep (or a YAML "
                        "alias that holds itself); flatten it")
        if count > MAX_NODES:
            raise error(f"{where}:{line}: more than {MAX_NODES} values once YAML aliases are "
                        "expanded; write the values out or use fewer aliases")
        if isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
