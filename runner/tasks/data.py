"""A task's rows: `datasets.load_dataset` exactly as lm-eval calls it, plus the checks that turn
its failures into one line naming the file, the line and the fix.

    load_rows(spec) -> data files checked first (dataset_path json/csv with local data_files:
        readable, UTF-8, every JSON row parseable and no deeper than Arrow accepts)
      -> datasets.load_dataset(path=dataset_path, name=dataset_name, **dataset_kwargs)
         (hub names, local folders named like the repo id, packaged builders; HF_HUB_OFFLINE /
         HF_DATASETS_OFFLINE are honoured by datasets itself, and a dataset that is not cached
         offline is one "not available offline" line)
      -> the splits lm-eval uses: eval docs (test split, else validation), the few-shot pool
         (fewshot_split, fewshot_config.samples, else training, validation, test) with
         process_docs (a native function) applied to each
      -> TaskRows (plain dicts, in dataset order).

`builtin:NAME` in data_files names a file shipped in runner/data/tasks/ (the default suite's
offline tasks); every other path is the caller's, relative to the working directory as in
lm-eval. `anchor_data_files(task_config)` makes those relative paths absolute (the run
lifecycle calls it once, before the config is hashed and stored), so a run's config and
recipe name the same files from any folder.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from runner.datasets import lone_surrogate
from runner.tasks.natives import native

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "tasks"
BUILTIN_PREFIX = "builtin:"
# Arrow, which datasets reads rows into, rejects schemas nested deeper than this many
# containers (measured: pyarrow 26 loads 63 levels, fails at 64; tests/runner/tasks/
# test_data.py checks the boundary), so such a row is reported before datasets hits it.
MAX_ROW_NESTING = 63
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class TaskDataError(ValueError):
    """A task's data that cannot be read; the message is one line."""


@dataclass
class TaskRows:
    eval_split: str
    eval_docs: list[dict]
    fewshot_docs: list[dict]
    fewshot_source: str  # where the few-shot pool came from, for info()
    features: list[str]
    split_sizes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def resolve_data_files(data_files: Any) -> Any:
    """data_files with `builtin:NAME` expanded to the shipped file's absolute path."""
    if isinstance(data_files, str):
        if data_files.startswith(BUILTIN_PREFIX):
            return os.fspath(BUILTIN_DIR / data_files[len(BUILTIN_PREFIX):])
        return data_files
    if isinstance(data_files, list):
        return [resolve_data_files(f) for f in data_files]
    if isinstance(data_files, dict):
        return {k: resolve_data_files(v) for k, v in data_files.items()}
    return data_files


def _absolute(data_files: Any) -> Any:
    if isinstance(data_files, str):
        path = os.path.expanduser(data_files)
        # only what is there: a name that is not (a hub repo's own file) is left as written
        if data_files.startswith(BUILTIN_PREFIX) or "://" in data_files or \
                not (os.path.exists(path) or glob.glob(path)):
            return data_files
        return os.path.abspath(path)
    if isinstance(data_files, list):
        return [_absolute(f) for f in data_files]
    if isinstance(data_files, dict):
        return {k: _absolute(v) for k, v in data_files.items()}
    return data_files


def anchor_data_files(node: Any) -> None:
    """Every relative path in dataset_kwargs.data_files of a TaskConfig tree (subtasks
    included) that names files in the working directory, where lm-eval would read them, made
    absolute."""
    kwargs = getattr(node, "dataset_kwargs", None)
    if kwargs and kwargs.get("data_files") is not None:
        kwargs["data_files"] = _absolute(kwargs["data_files"])
    for sub in (getattr(node, "subtasks", None) or {}).values():
        anchor_data_files(sub)


def _local_files(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [] if "://" in data_files or any(c in data_files for c in "*?[") else [data_files]
    if isinstance(data_files, list):
        return [p for f in data_files for p in _local_files(f)]
    if isinstance(data_files, dict):
        return [p for f in data_files.values() for p in _local_files(f)]
    return []


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _check_json_row(row: Any, where: str, error: type) -> None:
    if not isinstance(row, dict):
        raise error(f"{where}: a row must be a JSON object, got {type(row).__name__}; "
                    "write one object per line")
    depth = _depth(row)
    if depth > MAX_ROW_NESTING:
        raise error(f"{where}: the row is nested {depth} levels deep; datasets (Arrow) "
                    f"reads at most {MAX_ROW_NESTING}; flatten the nested fields")


def _check_text(value: Any, where: str, error: type) -> None:
    if lone_surrogate(value):  # Arrow refuses these ("the surrogate pair in string is invalid")
        raise error(f"{where}: a \\u escape is half of a UTF-16 surrogate pair (not text); "
                    "write the character itself or its full pair")


def _check_csv(p: Path, text: str, error: type) -> None:
    reader = csv.reader(io.StringIO(text))
    # the csv module's own field limit (128 KiB) is not one of datasets' (pandas has none)
    limit = csv.field_size_limit(sys.maxsize)
    rows = 0
    try:
        width = None
        for row in reader:
            rows += bool(row)
            if not row:
                continue
            width = len(row) if width is None else width
            if len(row) != width:
                raise error(f"{p}:{reader.line_num}: malformed CSV row ({len(row)} fields, the "
                            f"header has {width}); quote fields that contain commas")
    except csv.Error as e:
        raise error(f"{p}:{reader.line_num}: malformed CSV ({e}); fix the quoting") from None
    finally:
        csv.field_size_limit(limit)
    if rows < 2:
        raise error(f"{p}: a header row and no data rows; add the rows under the header")


def check_data_file(path: str, builder: str, error: type = TaskDataError) -> None:
    """Raise `error` naming the file and line if `path` cannot give rows to `builder` (json,
    csv; other builders: only that the file is readable). runner/hf_source.py checks its local
    files here too, with error=DatasetError."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{p}: data file not found; check dataset_kwargs.data_files (relative "
                    f"paths are from {os.getcwd()})") from None
    except IsADirectoryError:
        raise error(f"{p}: is a directory, not a data file; name the file itself (or a glob "
                    "such as DIR/*.jsonl)") from None
    except OSError as e:
        raise error(f"{p}: cannot read the data file ({e.strerror or e}); check its "
                    "permissions") from None
    if builder not in ("json", "csv"):
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{p}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file "
                    "as UTF-8") from None
    if not text.strip():
        raise error(f"{p}: the data file is empty; it needs a row (a header row for CSV)")
    if builder == "csv":
        _check_csv(p, text, error)
        return
    stripped = text.lstrip()
    if stripped.startswith("[") or (p.suffix == ".json" and stripped.startswith("{")
                                    and "\n{" not in stripped):
        try:
            doc = json.loads(text)
        except RecursionError:
            raise error(f"{p}: nested too deeply for a JSON reader; flatten the rows") from None
        except json.JSONDecodeError as e:
            if not stripped.startswith("["):
                doc = None  # maybe JSON Lines after all: checked line by line below
            else:
                raise error(f"{p}:{e.lineno}: malformed JSON ({e.msg}); fix the row") from None
        if isinstance(doc, list):
            if not doc:
                raise error(f"{p}: an empty JSON list; it needs at least one row")
            for i, row in enumerate(doc):
                _check_json_row(row, f"{p}: row {i}", error)
            if "\\u" in text:
                _check_text(doc, f"{p}", error)
            return
        if isinstance(doc, dict):
            if "\\u" in text:
                _check_text(doc, f"{p}", error)
            return  # a JSON object (datasets' `field` option picks the rows)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            raise error(f"{p}:{lineno}: the row is nested too deeply for a JSON reader; "
                        "flatten the nested fields") from None
        except json.JSONDecodeError as e:
            raise error(f"{p}:{lineno}: malformed JSON (column {e.colno}: {e.msg}); fix the "
                        "row or remove it") from None
        _check_json_row(row, f"{p}:{lineno}", error)
        if "\\u" in line:
            _check_text(row, f"{p}:{lineno}", error)


def local_cache_dir(folder: Path) -> str:
    """A datasets cache of its own for one local dataset folder in its current state (the
    paths, sizes and mtimes of its files). datasets keys the prepared copy of a local folder
    by its dataset card alone (huggingface/datasets#2956): an edited folder, or another folder
    of the same name, would silently be read from the copy prepared before."""
    import datasets

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return os.path.join(datasets.config.HF_DATASETS_CACHE, "local_folders", h.hexdigest()[:16])


def _load(path: str, name: Optional[str], kwargs: dict, where: str):
    import datasets

    if os.path.isdir(path) and "cache_dir" not in kwargs:
        kwargs = {**kwargs, "cache_dir": local_cache_dir(Path(path))}
    files = _local_files(kwargs.get("data_files"))
    if files:  # a failure names the data files it read
        where = f"{where}: {', '.join(files)}"
    try:
        return datasets.load_dataset(path=path, name=name, **kwargs)
    except (ConnectionError, FileNotFoundError) as e:
        label = f"{path}" + (f" ({name})" if name else "")
        if _offline():
            raise TaskDataError(
                f"{where}: dataset {label} is not available offline: HF_HUB_OFFLINE/"
                "HF_DATASETS_OFFLINE is set and it is not in the local cache; run once with "
                "network access, or point dataset_path at a local copy") from None
        raise TaskDataError(f"{where}: dataset {label} could not be loaded "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except ValueError as e:  # e.g. an unknown config name
        raise TaskDataError(f"{where}: dataset {path}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # datasets' builders wrap the reader's error
        cause = e.__cause__ or e
        raise TaskDataError(f"{where}: dataset {path} could not be read "
                            f"({type(cause).__name__}: {str(cause).splitlines()[0][:200]})"
                            ) from None


def _split(ds, split: str, where: str, role: str) -> list[dict]:
    if split not in ds:
        raise TaskDataError(f"{where}: {role} {split!r} is not a split of the dataset; "
                            f"available: {', '.join(ds.keys())}")
    return [dict(row) for row in ds[split]]


def load_rows(spec, where: str) -> TaskRows:
    """The eval docs and few-shot pool of one task (spec: runner.tasks.spec.TaskSpec)."""
    if not spec.dataset_path:
        raise TaskDataError(f"{where}: dataset_path is not set")
    kwargs = dict(spec.dataset_kwargs or {})
    warnings = []
    if kwargs.pop("trust_remote_code", None) is not None:
        warnings.append("dataset_kwargs.trust_remote_code dropped: datasets >= 4 runs no "
                        "dataset scripts (as lm-eval does)")
    if "data_files" in kwargs:
        kwargs["data_files"] = resolve_data_files(kwargs["data_files"])
        for f in _local_files(kwargs["data_files"]):
            check_data_file(f, spec.dataset_path)
    ds = _load(spec.dataset_path, spec.dataset_name, kwargs, where)
    splits: dict[str, list[dict]] = {}

    def rows(split: str, role: str, process: Optional[str]) -> list[dict]:
        key = (split, process)
        if key not in splits:
            docs = _split(ds, split, where, role)
            if process:
                docs = native(process, "process_docs", where)(docs)
            splits[key] = docs
        return splits[key]

    if spec.test_split:
        eval_split, eval_role = spec.test_split, "test_split"
    elif spec.validation_split:
        eval_split, eval_role = spec.validation_split, "validation_split"
    else:
        raise TaskDataError(f"{where}: the task has neither test_split nor validation_split; "
                            "set one of them")
    eval_docs = rows(eval_split, eval_role, spec.process_docs)
    fs = spec.fewshot
    if fs.split is not None:
        pool, source = rows(fs.split, "fewshot_split", fs.process_docs), f"split {fs.split}"
    elif fs.samples is not None:
        pool, source = [dict(s) for s in fs.samples], "fewshot_config.samples"
    else:
        for split, role in ((spec.training_split, "training_split"),
                            (spec.validation_split, "validation_split"),
                            (spec.test_split, "test_split")):
            if split:
                pool, source = rows(split, role, spec.process_docs), f"split {split}"
                break
    if fs.split is None and fs.samples is None and spec.num_fewshot > 0:
        warnings.append(f"num_fewshot > 0 but fewshot_split is not set: few-shot examples come "
                        f"from {source} (lm-eval's rule)")
    features = list(eval_docs[0]) if eval_docs else []
    return TaskRows(eval_split=eval_split, eval_docs=eval_docs, fewshot_docs=pool,
                    fewshot_source=source, features=features,
                    split_sizes={s: len(ds[s]) for s in ds.keys()}, warnings=warnings)
