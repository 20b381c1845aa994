"""File writing for run folders: atomic whole-file writes and the predictions journal.

    outputs/<experiment>/<run_id>/
      config.yaml  recipe.yaml  manifest.json  metrics.json  benchmark.json   (atomic)
      predictions.jsonl                                                       (append-only)
      run.log

Every file but predictions.jsonl is written whole to a temp file (.NAME.XXXX.tmp) in the same
folder, fsynced and os.replace'd over the target, so a reader (or a crash) sees the old file or
the new one, never half of one; a crash can leave the temp file, which the next writer of the
folder removes (`clean_temp_files`). predictions.jsonl is the run's journal: one JSON object
per finished item, appended, flushed and fsynced as it finishes. A run that dies mid-line
leaves a truncated last line; `PredictionLog.open` cuts it off, and the ids already present are
what resume skips. Files get the user's umask (0666 & ~umask), and no writer here follows a
symlink: the journal opens with O_NOFOLLOW and a link at an atomic write's target is refused.
runner/run/folder.py owns the folder itself (where it is, its lock, what goes in it).
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

PREDICTIONS = "predictions.jsonl"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
BENCHMARK = "benchmark.json"
CONFIG = "config.yaml"
RECIPE = "recipe.yaml"
RUN_LOG = "run.log"


def _json_default(obj: Any) -> Any:
    # numpy scalars and the like, which metrics and stats sometimes hand over.
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def dumps(obj: Any, indent: Optional[int] = 2) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default)


class SymlinkRefused(OSError):
    """A run-folder file is a symbolic link; writing through it could clobber its target."""


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_symlink(path: str | os.PathLike) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefused(f"{path} is a symbolic link; a run folder holds plain files only "
                             "(remove the link)")


def clean_temp_files(folder: str | os.PathLike) -> list[str]:
    """Remove the .NAME.XXXX.tmp files an interrupted atomic write left behind."""
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and \
                entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that `path` never holds a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_symlink(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; a run folder's files follow the user's umask.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class PredictionLog:
    """predictions.jsonl: read what is there (repairing a torn tail), then append records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict] = []
        self.done_ids: set[str] = set()
        self.dropped_bytes = 0
        self.duplicates = 0
        self._f = None

    def open(self) -> "PredictionLog":
        """Load finished records, cut a truncated last line, open for appending."""
        refuse_symlink(self.path)
        if self.path.exists():
            self._load_and_repair()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        self._f = os.fdopen(fd, "a", encoding="utf-8")
        return self

    def _load_and_repair(self) -> None:
        with open(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            data = f.read()
        good_end = 0  # byte offset just past the last complete, parseable line
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl == -1:
                break  # no newline: the writer died mid-line
            line = data[pos:nl]
            pos = nl + 1
            if not line.strip():
                good_end = pos
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # Only the tail can be torn (appends are sequential); a bad line in the
                # middle means the file was edited by hand, which resume must not paper over.
                if data[pos:].strip():
                    raise ValueError(f"{self.path}: line is not JSON and is not the last line; "
                                     "refusing to resume from a corrupted predictions file")
                break
            good_end = pos
            rid = str(rec.get("id"))
            if rid in self.done_ids:
                self.duplicates += 1
                continue
            self.done_ids.add(rid)
            self.records.append(rec)
        if good_end < len(data):
            self.dropped_bytes = len(data) - good_end
            with open(os.open(self.path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())

    def append(self, record: dict) -> None:
        rid = str(record["id"])
        if rid in self.done_ids:
            raise ValueError(f"prediction for item {rid!r} is already in {self.path}")
        assert self._f is not None, "PredictionLog.open() first"
        self._f.write(dumps(record, indent=None) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done_ids.add(rid)
        self.records.append(record)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "PredictionLog":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def iter_predictions(path: str | os.PathLike) -> Iterator[dict]:
    """Complete records of a predictions file (a torn last line is skipped, not repaired)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if line.strip():
                yield json.loads(line)
