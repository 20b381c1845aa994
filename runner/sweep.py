"""A sweep's folder across launchers, machines and restarts. No Hydra here.

    fresh_sweep_dir(path) -> path        the folder a new sweep gets: hydra.sweep.dir as the
                                         config names it (<output_root>/<experiment>/
                                         sweep_<time>), with -2, -3, ... when that exists, so a
                                         second sweep never writes into the first; the CLI
                                         passes it on as hydra.sweep.dir=..., which every
                                         launcher (and every node) then uses as given
    job_folder(sweep_dir, job_dir, cfg_hash, overrides) -> (folder, manifest or None)
                                         a job is matched to an earlier job of the sweep by its
                                         config hash (and its overrides), wherever that ran: a
                                         rerun of the sweep (the same command with
                                         hydra.sweep.dir=THAT) finds its finished jobs and
                                         skips them without loading a model, and continues an
                                         unfinished one in its folder
    redact_sweep_record(sweep_dir)       multirun.yaml (Hydra's) without the config's secrets
    finish_sweep(sweep_dir, started) -> [lines]
                                         after the launcher returns: the summary when Hydra's
                                         callback did not write it, and the incomplete jobs
    job_dirs(sweep_dir), incomplete_jobs(sweep_dir)
                                         the job folders (<sweep>/<job num>) and those that did
                                         not complete (no manifest: the job failed before its
                                         run folder existed; or a status other than
                                         "completed"), read from the shared file system after
                                         the launcher returns, wherever the jobs ran

The summary (CSV, Markdown, PNG: runner/summary.py) is written once, after the last job, by the
process that started the sweep.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from runner.store import MANIFEST


def _manifest(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fresh_sweep_dir(path: str | os.PathLike) -> str:
    base = os.path.abspath(os.fspath(path))
    candidate, k = base, 1
    while os.path.lexists(candidate):
        k += 1
        candidate = f"{base}-{k}"
    return candidate


def job_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """The job folders of a sweep (named by job number), in number order."""
    root = Path(sweep_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
            and p.name.isdigit()]
    return sorted(dirs, key=lambda p: int(p.name))


def job_folder(sweep_dir: str | os.PathLike, job_dir: str | os.PathLike, cfg_hash: str,
               overrides: list[str]) -> tuple[Path, Optional[dict]]:
    """Where a sweep job runs: its own `job_dir` when that holds a run (plan_location checks
    the hash), else an earlier job folder of the sweep with the same config hash and the same
    overrides (the same job under another number), else its own, new, folder."""
    from runner.run.secrets import redact_override

    own = Path(os.path.abspath(job_dir))
    mine = _manifest(own)
    if mine is not None:
        return own, mine
    # The overrides tell apart jobs whose configs hash alike (a sweep over cpu_threads or
    # engine.data_parallel_size: where a run runs stays out of its hash).
    wanted = sorted(redact_override(o) for o in overrides)
    found = []
    for folder in job_dirs(sweep_dir):
        m = _manifest(folder)
        if m is not None and m.get("config_hash") == cfg_hash and \
                sorted(str(o) for o in m.get("overrides", [])) == wanted:
            found.append((m.get("status") != "completed", int(folder.name), folder, m))
    if not found:
        return own, None
    _, _, folder, manifest = min(found, key=lambda t: t[:2])
    try:
        own.rmdir()  # the empty folder the launcher made for this job number
    except OSError:
        pass
    return folder, manifest


def incomplete_jobs(sweep_dir: str | os.PathLike) -> list[str]:
    """'<job>: <status>' for every job folder that did not complete."""
    lines = []
    for folder in job_dirs(sweep_dir):
        m = _manifest(folder)
        status = "failed before its run folder was made" if m is None \
            else str(m.get("status", "unknown"))
        if status != "completed":
            lines.append(f"job {folder.name}: {status}")
    return lines


def redact_sweep_record(sweep_dir: Path) -> None:
    """Hydra writes multirun.yaml itself: its secrets are redacted before the first job, and a
    sweep folder of a config with a secret is closed to other users, like its run folders."""
    import yaml

    from runner.run.secrets import scrub, secret_values
    from runner.store import atomic_write_text, current_umask

    path = sweep_dir / "multirun.yaml"
    if not path.is_file() or path.is_symlink():
        return
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    clean = scrub(doc, secret_values(doc))
    if clean != doc:
        atomic_write_text(path, yaml.safe_dump(clean, sort_keys=False))
        os.chmod(sweep_dir, 0o777 & ~current_umask() & ~0o007)


def finish_sweep(sweep_dir: str | os.PathLike, started: float) -> list[str]:
    """After the launcher returned (or failed): the summary, if Hydra's end-of-sweep callback
    did not write it in this sweep (a launcher that raised skips the callback), and the lines
    of the jobs that did not complete."""
    from runner.summary import write_summary

    root = Path(sweep_dir)
    if not job_dirs(root):
        return []
    summary = root / "summary.csv"
    if not summary.is_file() or summary.stat().st_mtime < started:
        try:
            out = write_summary(root)
            print(f"sweep summary: {', '.join(out['files'])}", flush=True)
        except Exception as exc:  # a summary never turns a sweep into a failure
            print(f"runner: could not write the sweep summary in {root}: {exc}",
                  file=sys.stderr, flush=True)
    return incomplete_jobs(root)
