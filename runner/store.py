"""The output folder of one run: atomic file writes, the predictions log, resume.

    outputs/<experiment>/<run_id>/
      config.yaml  recipe.yaml  manifest.json  metrics.json  benchmark.json   (atomic)
      predictions.jsonl                                                       (append-only)
      run.log

Every file but predictions.jsonl is written whole to a temp file in the same folder, fsynced
and os.replace'd over the target, so a reader (or a crash) sees the old file or the new one,
never half of one. predictions.jsonl is the run's journal: one JSON object per finished prompt,
appended, flushed and fsynced as it finishes. A run that dies mid-line leaves a truncated last
line; `PredictionLog.open` cuts it off, and the ids already present are what resume skips.
"""
from __future__ import annotations

import json
import os
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that `path` never holds a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; run folders are meant to be read by others too.
        os.chmod(tmp, 0o644)
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
        if self.path.exists():
            self._load_and_repair()
        self._f = open(self.path, "a", encoding="utf-8")
        return self

    def _load_and_repair(self) -> None:
        data = self.path.read_bytes()
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
            with open(self.path, "r+b") as f:
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


class RunStore:
    """Paths and writers of one run folder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def exists(self) -> bool:
        return self.run_dir.is_dir() and any(self.run_dir.iterdir())

    def create(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path(name), obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path(name), text)

    def read_json(self, name: str) -> Any:
        return read_json(self.path(name))

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def predictions(self) -> PredictionLog:
        return PredictionLog(self.path(PREDICTIONS))
