"""One run, start to finish, for every mode: validated config in, run folder out. No Hydra here.

    RunConfig (dataclasses, from cli.py)                                      nothing written:
      -> validate_run (sampling rules, backend, task or dataset, limit, experiment, files)
      -> mode.prepare(cfg, sweep_job) -> Plan (the task's docs, pairs or workload; its
         fingerprint); a sweep job's task records sampling values it cannot use as warnings
      -> config hash; a sweep job that an earlier run of the sweep finished (same hash, same
         overrides: runner/sweep.py) is skipped here, before any model loads
      -> plan_location (id, resume, paths inside output_root)
      -> an existing folder is locked now (one writer; a live holder is named, a dead one's
         lock taken over)
      -> the model source -> build_backend (loads the model: a bad engine value or a missing
         model fails here) -> mode.check_backend
    -> folder.open(): created with the user's umask, locked, symlinks refused, .tmp cleaned
      -> config.yaml, recipe.yaml, manifest.json (status "running"), run.log (from line one)
      -> mode.execute(plan, Session) -> Outcome: predictions.jsonl as items finish (a Ray
         backend's replica failures go into manifest.json as they happen)
      -> benchmark.json, metrics.json (atomic), manifest "completed" (or "failed" /
         "interrupted" with the error; SIGTERM and Ctrl-C are interrupts)
      -> backend.close() and the lock released, whatever happened

A run that fails before its folder exists leaves nothing behind; one that fails later keeps its
folder, its predictions and a manifest that says why. A session that fails on a run that was
already complete leaves the run "completed" and its metrics.json and benchmark.json as they were.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

from runner import manifest as mf
from runner.model_source import adapter_hashes, resolve_model_source, weight_hashes
from runner.run.folder import RunFolder, plan_location
from runner.run.interrupts import RunInterrupted, interrupts
from runner.run.modes import get_mode
from runner.run.plan import Session
from runner.run.recipe import recipe_document
from runner.run.runlog import RunLog
from runner.run.secrets import redact_override, secret_values
from runner.schemas import RunConfig, to_plain
from runner.store import BENCHMARK, CONFIG, MANIFEST, METRICS, RECIPE, RUN_LOG, read_json
from runner.sweep import job_folder
from runner.validation import ConfigError, validate_run

log = logging.getLogger("runner")


class EngineSetupError(ValueError):
    """The backend could not be built from the config (bad engine value, missing model)."""


@dataclass
class RunContext:
    """What the CLI knows about the invocation that the config itself does not say."""

    choices: dict = field(default_factory=dict)  # group -> chosen option (hydra choices)
    overrides: list = field(default_factory=list)  # this job's command-line overrides
    command: list = field(default_factory=list)  # argv as typed
    job_dir: Optional[str] = None  # a sweep job's folder (Hydra made it); None for one run
    sweep_dir: Optional[str] = None  # the sweep's folder (hydra.sweep.dir), for a job


@dataclass
class RunResult:
    run_dir: str
    run_id: str
    status: str
    metrics: Optional[dict] = None
    objective: Optional[float] = None  # the sweep objective's value (Hydra's sweepers)
    summary: str = ""


def _normalize(cfg: RunConfig) -> None:
    # A relative path means "relative to where I ran the command"; store it absolute so the
    # config, its hash and the recipe mean the same file from any directory.
    if cfg.task is not None:
        from runner.tasks.data import anchor_data_files

        anchor_data_files(cfg.task)  # lm-eval reads them from the working directory too
        return
    source = cfg.dataset.source
    scheme, _, rest = source.partition(":")
    if scheme == "jsonl":
        cfg.dataset.source = "jsonl:" + os.path.abspath(os.path.expanduser(rest))
    elif scheme == "hf":
        name, sep, tail = rest.partition(":")
        if name and os.path.exists(os.path.expanduser(name)):
            cfg.dataset.source = "hf:" + os.path.abspath(os.path.expanduser(name)) + sep + tail


def objective_key(cfg: RunConfig, plan: Any) -> Optional[str]:
    key = cfg.sweep_objective or plan.primary_metric
    if cfg.sweep_objective and plan.metrics and key not in plan.metrics:
        raise ConfigError(f"sweep_objective={key!r} is not a metric of this run; its metrics: "
                          f"{', '.join(plan.metrics)}")
    return key


def resume_command(ctx: RunContext, run_id: str) -> str:
    args = [redact_override(a) for a in ctx.command] or ["python", "-m", "runner"]
    if ctx.job_dir is not None:
        if not any(a.startswith("hydra.sweep.dir=") for a in args):
            args.append(f"hydra.sweep.dir={ctx.sweep_dir}")
        return shlex.join(args)
    args = [a for a in args if not a.startswith(("run_id=", "resume="))]
    return shlex.join([*args, f"run_id={run_id}"])


def _build_backend(cfg: RunConfig, source: Any, overrides: Optional[dict] = None):
    from runner.backends import build_backend

    try:
        return build_backend(cfg, source, overrides)
    except (ValueError, NotImplementedError, TypeError, OSError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        where = "engine=remote" if cfg.engine.backend == "remote" else \
            f"model {cfg.model.name!r} with the engine group"
        raise EngineSetupError(f"{where} could not start: {lines[0]}") from exc


def run(cfg: RunConfig, ctx: Optional[RunContext] = None) -> RunResult:
    """Run `cfg`; raises ConfigError/DatasetError/... with a one-line message on bad input."""
    ctx = ctx or RunContext()
    runlog = RunLog(secret_values(to_plain(cfg)))
    try:
        with interrupts():
            return _Run(cfg, ctx, runlog).run()
    finally:
        runlog.close()


class _Run:
    def __init__(self, cfg: RunConfig, ctx: RunContext, runlog: RunLog):
        self.cfg, self.ctx, self.runlog = cfg, ctx, runlog
        self.folder: Optional[RunFolder] = None
        self.backend = None
        self.manifest: dict = {}
        self.session: dict = {}
        self.was_complete = False

    def run(self) -> RunResult:
        cfg = self.cfg
        validate_run(cfg)
        _normalize(cfg)
        mode = get_mode(cfg.mode.value)
        # a sweep job records task settings it cannot use instead of refusing them, so a
        # sweep over mixed tasks (-m task=gsm8k,mmlu sampling.temperature=0,0.7) runs every job
        plan = mode.prepare(cfg, sweep_job=self.ctx.job_dir is not None)
        key = objective_key(cfg, plan)
        cfg_hash = mf.config_hash(cfg, plan.fingerprint)
        job_dir = self.ctx.job_dir
        if job_dir is not None:
            folder, found = job_folder(self.ctx.sweep_dir or os.path.dirname(job_dir), job_dir,
                                       cfg_hash, self.ctx.overrides)
            if found is not None and found.get("config_hash") == cfg_hash \
                    and found.get("status") == "completed":
                return self._skipped(folder, found, key)
            job_dir = str(folder)
        location = plan_location(cfg, cfg_hash, plan.id_fields, job_dir, self.ctx.sweep_dir)
        self.folder = RunFolder(location, secrets=secret_values(to_plain(cfg)))
        try:
            if not location.fresh:
                self.folder.lock()  # before the model loads: a run in use is refused at once
            source = resolve_model_source(cfg.model, cfg.engine.load_format)
            self.backend = _build_backend(cfg, source)
            mode.check_backend(plan, self.backend)
            cleaned = self.folder.open()
            self.runlog.attach(self.folder.file(RUN_LOG))
            if cleaned:
                log.info("removed leftover temp files of an interrupted write: %s", cleaned)
            self._start(plan, cfg_hash, source, location.existing)
            return self._execute(mode, plan, key)
        finally:
            if self.backend is not None:
                self.backend.close()
            self.folder.release()

    def _skipped(self, folder: Any, manifest: dict, key: Optional[str]) -> RunResult:
        """A sweep job that an earlier session of the sweep finished: nothing runs again."""
        try:
            metrics = read_json(folder / METRICS)
        except (OSError, ValueError):
            metrics = {}  # a mode without metrics, or a file removed by hand
        value = metrics.get("scores", {}).get(key) if key else None
        log.info("sweep job already finished in %s (config hash %s): skipped", folder,
                 str(manifest.get("config_hash"))[:8])
        return RunResult(str(folder), str(manifest.get("run_id", folder.name)), "completed",
                         metrics, float(value) if isinstance(value, (int, float)) else None,
                         "skipped: finished in an earlier run of this sweep")

    # ------------------------------------------------------------------ the folder's files
    def _start(self, plan: Any, cfg_hash: str, source: Any, existing: Optional[dict]) -> None:
        cfg, folder = self.cfg, self.folder
        info = self.backend.model_info()
        weights = weight_hashes(info.get("weight_files") or [], info.get("local_path"))
        lora = info.get("lora")
        if lora:    # the adapter's files count as weights: content_hash covers them
            weights += adapter_hashes(lora["path"])
        source_info = {"kind": source.kind, "model": source.model, "gguf_path": source.gguf_path,
                       "hub_id": cfg.model.model}
        model = mf.model_entry(cfg.model.name, source_info, info, weights)
        if lora:
            model["lora"] = {**lora, "files": [w for w in weights if w.get("lora")]}
        if existing is not None:
            self.manifest = existing
            self.was_complete = existing.get("status") == "completed"
            self.manifest.update(status="running", updated=mf.now_iso())
            self._mark_dead_sessions()
            log.info("resuming run %s in %s", folder.run_id, folder.path)
        else:
            self.manifest = mf.base_manifest(
                run_id=folder.run_id, experiment=cfg.experiment, cfg=cfg, cfg_hash=cfg_hash,
                entries=plan.manifest, choices=self.ctx.choices, overrides=self.ctx.overrides,
                model=model, command=self.ctx.command)
        self.manifest["model"] = model
        self.manifest["content_hash"] = mf.content_hash(cfg_hash, model)
        self.manifest["backend"] = self._backend_entry()
        if hasattr(self.backend, "on_failure"):
            self.backend.on_failure = self._replica_failed
        self.manifest["sampling_mode"] = plan.id_fields.get("sampling")
        self.session = {"started": mf.now_iso(), "command": self.ctx.command,
                        "status": "running", "pid": os.getpid(), "host": socket.gethostname()}
        self.manifest.setdefault("sessions", []).append(self.session)
        plain = to_plain(cfg)
        folder.write_yaml(CONFIG, plain, "# resolved config of this run\n")
        folder.write_yaml(RECIPE, recipe_document(plain, self.ctx.choices),
                          f"# Reruns this run: python -m runner recipe={folder.file(RECIPE)}\n",
                          redacted=False)
        self._save_manifest()
        log.info("run %s -> %s (config hash %s, mode %s)", folder.run_id, folder.path,
                 cfg_hash[:8], cfg.mode.value)

    def _backend_entry(self) -> dict:
        b = self.backend
        entry: dict = {"kind": b.kind}
        if getattr(b, "args", None) is not None:
            entry["engine_args"] = dataclasses.asdict(b.args)
            entry["cpu_threads"] = getattr(b, "cpu_threads", None)
        else:
            entry.update(url=getattr(b, "base", None), model=getattr(b, "model", None))
        if hasattr(b, "manifest_entry"):  # the Ray backend: its replicas and their failures
            entry.update(b.manifest_entry())
        return entry

    def _replica_failed(self, failure: dict) -> None:
        """A data-parallel replica died (runner/backends/ray.py): into manifest.json now."""
        self.manifest["backend"] = self._backend_entry()
        self._save_manifest()

    def _mark_dead_sessions(self) -> None:
        pid, _ = self.folder.previous_holder
        for s in self.manifest.get("sessions", []):
            if s.get("status") == "running":
                s["status"] = "killed"  # we hold the lock: no process of that session is left
                log.warning("session of %s (PID %s) ended without finishing (killed?); resuming "
                            "from its predictions", s.get("started"), s.get("pid", pid))

    def _save_manifest(self) -> None:
        self.folder.write_json(MANIFEST, self.manifest)

    # ------------------------------------------------------------------ the work
    def _execute(self, mode: Any, plan: Any, key: Optional[str]) -> RunResult:
        folder = self.folder
        session = Session(cfg=self.cfg, folder=folder, backend=self.backend,
                          manifest=self.manifest, session=self.session,
                          save_manifest=self._save_manifest,
                          make_backend=lambda o: _build_backend(
                              self.cfg, resolve_model_source(self.cfg.model,
                                                             self.cfg.engine.load_format), o),
                          use_tqdm=self.cfg.use_tqdm)
        try:
            outcome = mode.execute(plan, session)
            if outcome.benchmark is not None:
                folder.write_json(BENCHMARK, outcome.benchmark)
            metrics = None
            if outcome.metrics is not None:
                metrics = {**outcome.metrics, "model": self.cfg.model.name,
                           "sampling_mode": plan.id_fields.get("sampling"),
                           "config_hash": self.manifest.get("config_hash"),
                           "content_hash": self.manifest.get("content_hash")}
                folder.write_json(METRICS, metrics)
            self._finish("completed")
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._finish(status, exc)
            raise
        value = (metrics or {}).get("scores", {}).get(key) if key else None
        log.info("run %s completed: %s", folder.run_id, outcome.summary or "-")
        return RunResult(str(folder.path), folder.run_id, "completed", metrics,
                         float(value) if isinstance(value, (int, float)) else None,
                         outcome.summary)

    def _finish(self, status: str, exc: Optional[BaseException] = None) -> None:
        now = mf.now_iso()
        self.session.update(status=status, finished=now)
        run_status = status
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.session["error"] = error
            # a finished run stays finished: its predictions and metrics are all still valid
            run_status = "completed" if self.was_complete and status == "failed" else status
            if run_status != "completed":
                self.manifest["error"] = error
            exc.run_dir = str(self.folder.path)  # the CLI names the folder in its one line
            exc.run_status = run_status
            if isinstance(exc, KeyboardInterrupt):
                exc.resume = resume_command(self.ctx, self.folder.run_id)
                exc.items_done = self._items_done()
        else:
            self.manifest.pop("error", None)
        if hasattr(self.backend, "manifest_entry"):
            self.manifest["backend"] = self._backend_entry()  # final replica counts
        self.manifest.update(status=run_status, updated=now)
        self._save_manifest()
        if exc is not None:
            header = f"run {self.folder.run_id} {status}: {self.session['error']}"
            if isinstance(exc, RunInterrupted):
                log.warning(header)
            else:
                self.runlog.traceback(exc, header=header)

    def _items_done(self) -> Optional[int]:
        from runner.store import PREDICTIONS, iter_predictions

        path = self.folder.file(PREDICTIONS)
        return sum(1 for _ in iter_predictions(path)) if path.is_file() else 0
