"""One run, start to finish: validated config in, output folder out. No Hydra here.

    RunConfig (dataclasses, from cli.py)
      -> validate_run (JSON Schema sampling rules, files exist)      nothing written yet
      -> resolve the model source (GGUF in a package, folder, hub id)
      -> load_examples (dataset rows -> Examples) -> config hash
      -> pick the run folder: new, or an existing one to resume       folder appears here
      -> config.yaml, recipe.yaml, manifest.json (status "running"), run.log
      -> LLM(**kwargs) -> weight hashes -> content hash
      -> LLMEngine loop: add_request per unfinished item, step(), and each finished
         RequestOutput is scored and appended to predictions.jsonl at once
      -> metrics.json (over every item, resumed ones too), benchmark.json (this session)
      -> manifest.json status "completed" (or "failed"/"interrupted" with the error)

A run that fails before its folder exists leaves nothing behind; one that fails later leaves
a folder whose manifest says "failed" and no metrics.json. Resume: an existing run folder
(run_id=ID, resume=true, or a sweep rerun into the same sweep folder) continues from its
predictions.jsonl when its config hash matches; finished items are never generated again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from runner import manifest as mf
from runner.benchmark import BenchmarkRecorder
from runner.model_source import llm_kwargs, resolve_model_source, weight_hashes
from runner.schemas import Mode, RunConfig, to_plain
from runner.store import BENCHMARK, CONFIG, MANIFEST, METRICS, RECIPE, RUN_LOG, RunStore
from runner.validation import ConfigError, sampling_mode, validate_run

log = logging.getLogger("runner")

RECIPE_VERSION = 1
GROUPS = ("model", "engine", "sampling", "dataset")
# Keys a recipe never carries: they say where a run is stored, and a rerun is a new run.
RECIPE_DROP_KEYS = ("output_root", "run_id", "run_id_pattern", "resume")


@dataclass
class RunContext:
    """What the CLI knows about the invocation that the config itself does not say."""

    choices: dict = field(default_factory=dict)  # group -> chosen option (hydra choices)
    overrides: list = field(default_factory=list)  # this job's command-line overrides
    command: list = field(default_factory=list)  # argv as typed
    job_dir: Optional[str] = None  # a sweep job's folder (Hydra made it); None for one run


@dataclass
class RunResult:
    run_dir: str
    run_id: str
    status: str
    metrics: Optional[dict] = None


# ---------------------------------------------------------------------------------------------
# Recipes and the resolved config


def config_document(cfg: RunConfig) -> dict:
    return to_plain(cfg)


def recipe_document(cfg: RunConfig, choices: dict) -> dict:
    """A recipe that reruns this run: the group choices plus every resolved value."""
    config = to_plain(cfg)
    for key in RECIPE_DROP_KEYS:
        config.pop(key, None)
    return {
        "recipe_version": RECIPE_VERSION,
        "choices": {g: choices[g] for g in GROUPS if choices.get(g) is not None},
        "config": config,
    }


def _yaml(obj: Any, header: str = "") -> str:
    return header + yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)


# ---------------------------------------------------------------------------------------------
# Choosing the run folder


def _fresh_run_id(cfg: RunConfig, cfg_hash: str, mode_name: str) -> str:
    fields = {
        "time": time.strftime("%Y%m%d-%H%M%S"),
        "model": cfg.model.name,
        "sampling": mode_name,
        "dataset": cfg.dataset.name,
        "hash": cfg_hash[:8],
    }
    try:
        run_id = cfg.run_id_pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"run_id_pattern={cfg.run_id_pattern!r} is not valid ({e}); "
                          f"allowed fields: {', '.join('{' + k + '}' for k in fields)}") from None
    return run_id.replace("/", "-").replace(os.sep, "-")


def _read_manifest(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def choose_run_dir(cfg: RunConfig, cfg_hash: str, job_dir: Optional[str]) -> tuple[Path, str, Optional[dict]]:
    """(run folder, run id, existing manifest when resuming)."""
    exp_dir = Path(cfg.output_root) / cfg.experiment
    if job_dir is not None:
        run_dir = Path(job_dir)
        run_id = os.path.relpath(run_dir, exp_dir) if run_dir.is_relative_to(exp_dir) \
            else f"{run_dir.parent.name}/{run_dir.name}"
    elif cfg.run_id is not None:
        run_id = cfg.run_id
        run_dir = exp_dir / run_id
    elif cfg.resume:
        run_dir = _latest_unfinished(exp_dir, cfg_hash)
        if run_dir is None:
            log.info("resume=true: no unfinished run with config hash %s in %s; starting a new "
                     "run", cfg_hash[:8], exp_dir)
            return choose_run_dir_fresh(cfg, cfg_hash, exp_dir)
        run_id = run_dir.name
    else:
        return choose_run_dir_fresh(cfg, cfg_hash, exp_dir)

    existing = _read_manifest(run_dir)
    if existing is None:
        # A sweep job's folder is made (empty) by Hydra just before the job runs.
        if job_dir is None and run_dir.is_dir() and any(run_dir.iterdir()):
            raise ConfigError(f"run folder {run_dir} exists but holds no manifest.json; it is not "
                              "a run this runner can resume (choose another run_id)")
        return run_dir, run_id, None
    if existing.get("config_hash") != cfg_hash:
        raise ConfigError(
            f"run folder {run_dir} holds a run with another config (config hash "
            f"{str(existing.get('config_hash'))[:8]} != {cfg_hash[:8]}); resuming it would mix "
            "results. Choose another run_id, or rerun with that run's recipe.yaml")
    return run_dir, run_id, existing


def choose_run_dir_fresh(cfg: RunConfig, cfg_hash: str, exp_dir: Path):
    base = _fresh_run_id(cfg, cfg_hash, sampling_mode(cfg.sampling))
    run_id, k = base, 1
    while (exp_dir / run_id).exists():
        k += 1
        run_id = f"{base}-{k}"
    return exp_dir / run_id, run_id, None


def _latest_unfinished(exp_dir: Path, cfg_hash: str) -> Optional[Path]:
    if not exp_dir.is_dir():
        return None
    found = []
    for manifest_path in exp_dir.glob("**/" + MANIFEST):
        m = _read_manifest(manifest_path.parent)
        if m and m.get("config_hash") == cfg_hash and m.get("status") != "completed":
            found.append((manifest_path.stat().st_mtime, manifest_path.parent))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------
# Prompts and records


def item_seed(run_seed: int, item_id: str) -> int:
    """A per-item sampling seed: the same item samples the same text in any batch or resume."""
    digest = hashlib.sha256(f"{run_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def render_prompt(tokenizer: Any, example: Any) -> tuple[str, list[int]]:
    """(prompt text, prompt token ids) as vLLM's LLM.chat / LLM.generate would build them."""
    if example.messages is not None:
        text = tokenizer.apply_chat_template(example.messages, tokenize=False,
                                             add_generation_prompt=True)
        # The chat template already holds the special tokens (BOS etc.); adding more would
        # change the prompt the model was trained on.
        return text, list(tokenizer.encode(text, add_special_tokens=False))
    return example.prompt, list(tokenizer.encode(example.prompt))


def _logprobs_json(logprobs: Any) -> Any:
    if logprobs is None:
        return None
    out = []
    for position in logprobs:
        if position is None:
            out.append(None)
            continue
        out.append({str(tid): float(getattr(lp, "logprob", lp)) for tid, lp in position.items()})
    return out


def prediction_record(example: Any, index: int, prompt_text: str, prompt_ids: list[int],
                      out: Any, scores: Optional[dict]) -> dict:
    outputs = []
    for c in out.outputs:
        entry = {
            "index": c.index,
            "text": c.text,
            "token_ids": list(c.token_ids),
            "cumulative_logprob": c.cumulative_logprob,
            "finish_reason": c.finish_reason,
            "stop_reason": getattr(c, "stop_reason", None),
        }
        if getattr(c, "logprobs", None) is not None:
            entry["logprobs"] = _logprobs_json(c.logprobs)
        outputs.append(entry)
    record = {
        "id": example.id,
        "index": index,
        "prompt": prompt_text,
        "prompt_token_ids": prompt_ids,
        "prediction": out.outputs[0].text if out.outputs else "",
        "outputs": outputs,
        "references": list(example.references or []),
        "scores": scores,
    }
    if getattr(out, "prompt_logprobs", None) is not None:
        record["prompt_logprobs"] = _logprobs_json(out.prompt_logprobs)
    return record


# ---------------------------------------------------------------------------------------------
# Logging into run.log


class _RunLog:
    """run.log gets every log record of the run; tracebacks go there, not to the console."""

    def __init__(self, path: Path):
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(
            "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
        self.root = logging.getLogger()
        self.root.addHandler(self.handler)
        if self.root.level > logging.INFO or self.root.level == logging.NOTSET:
            self.root.setLevel(logging.INFO)

    def traceback(self, exc: BaseException, header: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"[{stamp}][runner][ERROR] {header}\n" + "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.handler.stream.write(text)
        self.handler.flush()

    def close(self) -> None:
        self.root.removeHandler(self.handler)
        self.handler.close()


# ---------------------------------------------------------------------------------------------
# The run


def _normalize(cfg: RunConfig) -> None:
    # A relative jsonl path means "relative to where I ran the command"; store it absolute so
    # the config, its hash and the recipe mean the same file from any directory.
    if cfg.dataset.source.startswith("jsonl:"):
        path = cfg.dataset.source[len("jsonl:"):]
        cfg.dataset.source = "jsonl:" + os.path.abspath(os.path.expanduser(path))


def run(cfg: RunConfig, ctx: Optional[RunContext] = None) -> RunResult:
    """Run `cfg`; raises ConfigError/DatasetError/... with a one-line message on bad input."""
    from runner.datasets import load_examples

    ctx = ctx or RunContext()
    if cfg.mode == Mode.bench:
        from runner.bench_mode import run_bench
        return run_bench(cfg, " ".join(ctx.command) or "python -m runner mode=bench")
    if cfg.mode == Mode.embed:
        from runner.embed_mode import run_embed
        return run_embed(cfg, " ".join(ctx.command) or "python -m runner mode=embed")
    validate_run(cfg)
    _normalize(cfg)
    source = resolve_model_source(cfg.model)
    examples, info = load_examples(cfg.dataset)
    cfg_hash = mf.config_hash(cfg, info.fingerprint)
    run_dir, run_id, existing = choose_run_dir(cfg, cfg_hash, ctx.job_dir)

    store = RunStore(run_dir)
    store.create()
    runlog = _RunLog(store.path(RUN_LOG))
    mode_name = sampling_mode(cfg.sampling)
    dataset_info = {"source": info.source, "num_rows_total": info.num_rows_total,
                    "num_examples": info.num_examples, "fingerprint": info.fingerprint,
                    "metric": info.metric}
    source_info = {"kind": source.kind, "model": source.model, "gguf_path": source.gguf_path,
                   "hub_id": cfg.model.model}
    if existing is not None:
        manifest = existing
        manifest.update(status="running", updated=mf.now_iso())
        log.info("resuming run %s in %s", run_id, run_dir)
    else:
        manifest = mf.base_manifest(
            run_id=run_id, experiment=cfg.experiment, cfg=cfg, cfg_hash=cfg_hash,
            dataset_info=dataset_info, choices=ctx.choices, overrides=ctx.overrides,
            model_source=source_info, command=ctx.command)
    manifest["sampling_mode"] = mode_name
    session = {"started": mf.now_iso(), "command": ctx.command, "status": "running"}
    manifest.setdefault("sessions", []).append(session)
    # A metrics file from an earlier session would claim a finished run while this one works.
    store.remove(METRICS)
    store.remove(BENCHMARK)
    store.write_text(CONFIG, _yaml(config_document(cfg), "# resolved config of this run\n"))
    store.write_text(RECIPE, _yaml(
        recipe_document(cfg, ctx.choices),
        f"# Reruns this run: python -m runner recipe={run_dir / RECIPE}\n"))
    store.write_json(MANIFEST, manifest)
    log.info("run %s -> %s (config hash %s, %d items, sampling %s)", run_id, run_dir,
             cfg_hash[:8], len(examples), mode_name)

    try:
        result = _generate_and_score(cfg, store, manifest, session, examples, info, source,
                                     cfg_hash, mode_name)
        manifest.update(status="completed", updated=mf.now_iso())
        session.update(status="completed", finished=mf.now_iso())
        store.write_json(MANIFEST, manifest)
        log.info("run %s completed: %s", run_id, _short_metrics(result))
        return RunResult(str(run_dir), run_id, "completed", result)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {exc}"
        manifest.update(status=status, updated=mf.now_iso(), error=error)
        session.update(status=status, finished=mf.now_iso(), error=error)
        store.remove(METRICS)
        store.write_json(MANIFEST, manifest)
        # The console gets one line from the CLI; run.log gets the whole story.
        runlog.traceback(exc, header=f"run {run_id} {status}: {error}")
        exc.run_dir = str(run_dir)  # the CLI names the folder in its one-line message
        raise
    finally:
        runlog.close()


def _short_metrics(metrics: Optional[dict]) -> str:
    if not metrics:
        return "-"
    return ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in metrics.get("scores", {}).items())


def _generate_and_score(cfg: RunConfig, store: RunStore, manifest: dict, session: dict,
                        examples: list, info: Any, source: Any, cfg_hash: str,
                        mode_name: str) -> Optional[dict]:
    from runner import metrics as task_metrics
    from runner.engine import LLM, SamplingParams

    t0 = time.time()
    if cfg.engine.url:
        from runner.remote_engine import RemoteLLM
        llm = RemoteLLM.from_configs(cfg.model, cfg.engine, cfg.seed, source)
    else:
        llm = LLM(**llm_kwargs(cfg.model, cfg.engine, cfg.seed, source))
    try:
        load_seconds = time.time() - t0
        engine = llm.llm_engine
        model_config = engine.model_config
        weights = weight_hashes(list(getattr(model_config, "weight_files", []) or []),
                                getattr(model_config, "model", None))
        manifest["model"] = mf.model_entry(cfg.model.name, manifest["model"].get("source"),
                                           model_config, weights)
        manifest["content_hash"] = mf.content_hash(cfg_hash, manifest["model"])
        store.write_json(MANIFEST, manifest)

        scoring = cfg.mode == Mode.eval
        tokenizer = llm.get_tokenizer()
        base_params = to_plain(cfg.sampling)
        derive_seed = base_params["seed"] is None and mode_name == "random"

        with store.predictions() as preds:
            if preds.dropped_bytes:
                log.warning("cut a truncated last line (%d bytes) from %s", preds.dropped_bytes,
                            preds.path)
            resumed = len(preds.done_ids)
            todo = [(i, ex) for i, ex in enumerate(examples) if ex.id not in preds.done_ids]
            session.update(resumed_items=resumed, todo_items=len(todo))
            log.info("%d items to generate, %d already in predictions.jsonl", len(todo), resumed)

            bench = BenchmarkRecorder()
            pending: dict[str, tuple] = {}
            for index, ex in todo:
                text, ids = render_prompt(tokenizer, ex)
                params = dict(base_params)
                if derive_seed:
                    params["seed"] = item_seed(cfg.seed, ex.id)
                engine.add_request(ex.id, {"prompt_token_ids": ids}, SamplingParams(**params))
                pending[ex.id] = (index, ex, text, ids)

            progress = _progress(cfg.use_tqdm, len(todo))

            def record(out) -> None:
                if not out.finished or out.request_id not in pending:
                    return
                index, ex, text, ids = pending.pop(out.request_id)
                bench.add(out)
                scores = None
                if scoring:
                    prediction = out.outputs[0].text if out.outputs else ""
                    scores = task_metrics.score(info.metric, prediction, ex.references)
                preds.append(prediction_record(ex, index, text, ids, out, scores))
                if progress is not None:
                    progress.update(1)

            try:
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        record(out)
            except BaseException:
                # requests that finished before the engine broke are finished work: keep them
                # (async output processing holds the last step's outputs back)
                for out in getattr(engine, "take_held_outputs", list)():
                    record(out)
                raise
            if progress is not None:
                progress.close()
            if pending:
                raise RuntimeError(f"the engine finished without outputs for {len(pending)} items: "
                                   f"{sorted(pending)[:5]}")

            by_id = {str(r["id"]): r for r in preds.records}
            ordered = [by_id[ex.id] for ex in examples if ex.id in by_id]

        stats = engine.get_stats() if hasattr(engine, "get_stats") else {}
        device = str((stats or {}).get("device", cfg.engine.device))
        store.write_json(BENCHMARK, bench.finish(engine_stats=stats, device=device,
                                                 resumed=resumed, load_seconds=load_seconds))
        if not scoring:
            return None
        agg = task_metrics.aggregate(info.metric, [r["scores"] for r in ordered])
        result = {
            "metric": info.metric,
            "scores": {k: v for k, v in agg.items() if k != "num_items"},
            "num_items": agg.get("num_items", len(ordered)),
            "model": cfg.model.name,
            "dataset": info.source,
            "sampling_mode": mode_name,
            "config_hash": cfg_hash,
            "content_hash": manifest.get("content_hash"),
        }
        store.write_json(METRICS, result)
        return result
    finally:
        # stop tensor-parallel workers now: the next job of a multirun builds its own engine
        if hasattr(llm.llm_engine, "shutdown"):
            llm.llm_engine.shutdown()


def _progress(use_tqdm: bool, total: int):
    if not use_tqdm or total == 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="items", unit="item")
