"""The run folder: where a run lives, who may write it, and every file written into it.

    plan_location(cfg, cfg_hash, id_fields, job_dir, sweep_dir) -> Location    (writes nothing)
      run_id=ID            <root>/<experiment>/ID: a new run, or that run resumed (same config
                           hash only; a folder of another config is refused)
      resume=true          the newest unfinished run of the experiment with this config hash
      a sweep job          the job folder Hydra made (<hydra.sweep.dir>/<job num>)
      otherwise            a fresh id from run_id_pattern (-2, -3, ... when taken)
      every path is resolved inside its root (output_root; a sweep's hydra.sweep.dir), and no
      part of it may be a symlink: `experiment=../..` or a linked folder is refused

    RunFolder(location).lock()    an existing folder is locked before the model loads
    RunFolder.open()              creates a new folder (the user's umask; no access for others
                                  when the config holds a secret), locks it (runner/run/
                                  lock.py), refuses symlinks inside it, removes leftover .tmp files
    write_json / write_yaml       atomic (runner/store.py), secrets redacted (secret keys, and
                                  the secret values wherever they appear)
    predictions()                 the journal, predictions.jsonl (append-only, O_NOFOLLOW)
    release()                     the lock goes; a clean run leaves no .lock behind

Nothing here deletes metrics.json or benchmark.json: a new session replaces them atomically when
it finishes, so a failed session on a finished run keeps the finished run's files.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from runner.run.lock import RunLock
from runner.run.secrets import mask_values, scrub
from runner.store import (MANIFEST, PredictionLog, atomic_write_json, atomic_write_text,
                          clean_temp_files, current_umask, PREDICTIONS)


class RunFolderError(ValueError):
    """A run folder the runner will not use; the message is one line naming it and the fix."""


@dataclass
class Location:
    path: Path
    run_id: str
    root: Path
    existing: Optional[dict]  # the manifest of the run being resumed
    fresh: bool  # True: the folder does not exist yet (its id was made here)


def read_manifest(run_dir: Path) -> Optional[dict]:
    try:
        with open(os.open(run_dir / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def contained(path: Path, root: Path, what: str) -> Path:
    """`path` made absolute; RunFolderError unless it lies inside `root` through no symlink."""
    root_real = Path(os.path.realpath(root))
    target = Path(os.path.normpath(os.path.join(root_real, path)))
    if os.path.commonpath([root_real, target]) != str(root_real) or target == root_real:
        raise RunFolderError(f"{what} resolves to {target}, outside {root_real}; run folders stay "
                             "inside output_root (use a plain relative name)")
    walk = root_real
    for part in target.relative_to(root_real).parts:
        walk = walk / part
        if walk.is_symlink():
            raise RunFolderError(f"{walk} is a symlink; the runner does not follow links inside "
                                 "output_root (remove it or choose another experiment/run_id)")
    return target


def fresh_run_id(pattern: str, fields: dict) -> str:
    try:
        run_id = pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise RunFolderError(f"run_id_pattern={pattern!r} is not valid ({e}); allowed fields: "
                             f"{', '.join('{' + k + '}' for k in fields)}") from None
    return run_id.replace("/", "-").replace(os.sep, "-").strip(".") or "run"


def _latest_unfinished(exp_dir: Path, cfg_hash: str) -> Optional[Path]:
    if not exp_dir.is_dir():
        return None
    found = []
    for manifest_path in exp_dir.glob("**/" + MANIFEST):
        m = read_manifest(manifest_path.parent)
        if m and m.get("config_hash") == cfg_hash and m.get("status") != "completed":
            found.append((manifest_path.stat().st_mtime, manifest_path.parent))
    return max(found)[1] if found else None


def plan_location(cfg: Any, cfg_hash: str, id_fields: dict, job_dir: Optional[str] = None,
                  sweep_dir: Optional[str] = None) -> Location:
    root = Path(os.path.abspath(cfg.output_root))
    if job_dir is not None:
        root = Path(os.path.abspath(sweep_dir or os.path.dirname(job_dir)))
        path = contained(Path(os.path.relpath(os.path.abspath(job_dir), root)), root,
                         f"the sweep job folder {job_dir}")
        exp_dir = Path(os.path.abspath(cfg.output_root)) / cfg.experiment
        run_id = os.path.relpath(path, exp_dir) if path.is_relative_to(exp_dir) \
            else f"{path.parent.name}/{path.name}"
        return _existing(path, run_id, root, cfg_hash, job=True)
    exp_dir = contained(Path(cfg.experiment), root, f"experiment={cfg.experiment}")
    if cfg.run_id is not None:
        path = contained(Path(cfg.experiment) / cfg.run_id, root, f"run_id={cfg.run_id}")
        return _existing(path, cfg.run_id, root, cfg_hash, job=False)
    if cfg.resume:
        found = _latest_unfinished(exp_dir, cfg_hash)
        if found is not None:
            path = contained(found.relative_to(os.path.realpath(root)), root, str(found))
            return _existing(path, path.name, root, cfg_hash, job=False)
    base = fresh_run_id(cfg.run_id_pattern, {"time": time.strftime("%Y%m%d-%H%M%S"),
                                             "model": cfg.model.name, "mode": cfg.mode.value,
                                             "hash": cfg_hash[:8], **id_fields})
    run_id, k = base, 1
    while (exp_dir / run_id).exists() or (exp_dir / run_id).is_symlink():
        k += 1
        run_id = f"{base}-{k}"
    return Location(exp_dir / run_id, run_id, root, None, fresh=True)


def _existing(path: Path, run_id: str, root: Path, cfg_hash: str, job: bool) -> Location:
    if not path.exists():
        return Location(path, run_id, root, None, fresh=True)
    if not path.is_dir():
        raise RunFolderError(f"{path} exists and is not a folder; choose another run_id")
    existing = read_manifest(path)
    if existing is None:
        # A sweep job's folder is made (empty) by Hydra just before the job runs.
        if any(e for e in path.iterdir() if e.name != ".lock") and not job:
            raise RunFolderError(f"run folder {path} exists but holds no manifest.json; it is "
                                 "not a run this runner can resume (choose another run_id)")
        return Location(path, run_id, root, None, fresh=False)
    if existing.get("config_hash") != cfg_hash:
        raise RunFolderError(
            f"run folder {path} holds a run with another config (config hash "
            f"{str(existing.get('config_hash'))[:8]} != {cfg_hash[:8]}); resuming it would mix "
            "results. Choose another run_id, or rerun with that run's recipe.yaml")
    return Location(path, run_id, root, existing, fresh=False)


def _yaml(obj: Any, header: str = "") -> str:
    return header + yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)


class RunFolder:
    def __init__(self, location: Location, secrets: Optional[list] = None):
        self.location = location
        self.path = location.path
        self.run_id = location.run_id
        self.secrets = list(secrets or [])  # masked wherever they appear in a written file
        self.private = bool(self.secrets)  # the config holds a secret: no access for others
        self._lock: Optional[RunLock] = None
        self.opened = False

    # ------------------------------------------------------------------ ownership
    def lock(self) -> RunLock:
        if self._lock is None:
            self._lock = RunLock(self.path).acquire()
        return self._lock

    def open(self) -> list[str]:
        """Create (new run) or take over (resume) the folder; returns what it cleaned up."""
        if self.location.fresh and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.path)
            except FileExistsError:
                raise RunFolderError(f"run folder {self.path} appeared while this run loaded "
                                     "its model (another runner?); run again") from None
        if self.private:
            os.chmod(self.path, 0o777 & ~current_umask() & ~0o007)
        self.lock()
        links = [e.name for e in os.scandir(self.path) if e.is_symlink()]
        if links:
            raise RunFolderError(f"run folder {self.path} holds symlinks ({', '.join(links)}); "
                                 "a run folder holds plain files only (remove them)")
        cleaned = clean_temp_files(self.path)
        self.opened = True
        return cleaned

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def previous_holder(self) -> tuple:
        return self._lock.previous if self._lock is not None else (None, None)

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.file(name), scrub(obj, self.secrets))

    def write_yaml(self, name: str, obj: Any, header: str = "", redacted: bool = True) -> None:
        """`redacted=False`: secret keys keep their values (a recipe's environment references);
        the secret values themselves are masked all the same."""
        clean = scrub(obj, self.secrets) if redacted else mask_values(obj, self.secrets)
        atomic_write_text(self.file(name), _yaml(clean, header))

    def predictions(self) -> PredictionLog:
        return PredictionLog(self.file(PREDICTIONS))
