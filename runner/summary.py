"""The summary of a sweep: one row per job, as CSV, a Markdown table and a PNG plot.

Data flow: Hydra calls `SweepSummaryCallback.on_multirun_end` once every job of
`python -m runner -m ...` has run; `write_summary(sweep_dir)` reads each job folder
(<sweep_dir>/<job num>/manifest.json, metrics.json, benchmark.json), finds the swept
parameters (the command-line overrides whose values differ between jobs), and writes

    summary.csv   every job: swept values, status ("killed" for a job left "running" whose
                  folder no live process holds), metrics, throughput, latency
    summary.md    the same as a Markdown table
    summary.png   each metric against the first swept parameter (one line per value of the
                  other swept parameters; categorical values sit at evenly spaced positions)

It can also be run by hand on a finished or partly failed sweep:
`python -m runner.summary outputs/<experiment>/<sweep folder>`.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("runner.summary")


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _num(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def collect_jobs(sweep_dir: str | Path) -> list[dict]:
    """One dict per job folder that has a manifest, in job-number order."""
    from runner.run.lock import lock_is_held

    jobs = []
    for manifest_path in Path(sweep_dir).glob("*/manifest.json"):
        job_dir = manifest_path.parent
        manifest = _read(manifest_path) or {}
        metrics = _read(job_dir / "metrics.json") or {}
        bench = _read(job_dir / "benchmark.json") or {}
        overrides = {}
        for o in manifest.get("overrides", []):
            key, _, value = o.partition("=")
            # Hydra records sweep values escaped for its grammar (jsonl\:a.jsonl); show them
            # as typed.
            overrides[key.lstrip("+~")] = re.sub(r"\\(.)", r"\1", value)
        latency = (bench.get("latency_s") or {})
        status = manifest.get("status", "unknown")
        if status == "running" and not lock_is_held(job_dir):
            status = "killed"  # no live process holds the job's folder: it will not finish
        jobs.append({
            "job": job_dir.name,
            "status": status,
            "overrides": overrides,
            "scores": metrics.get("scores", {}),
            "num_items": metrics.get("num_items"),
            "output_tokens_per_s": (bench.get("throughput") or {}).get("output_tokens_per_s"),
            "e2e_p50_s": (latency.get("e2e") or {}).get("p50"),
            "ttft_p50_s": (latency.get("ttft") or {}).get("p50"),
            "run_dir": str(job_dir),
        })
    jobs.sort(key=lambda j: (_num(j["job"]) if isinstance(_num(j["job"]), int) else 1 << 30,
                             j["job"]))
    return jobs


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys: list[str] = []
    for job in jobs:
        for k in job["overrides"]:
            if k not in keys:
                keys.append(k)
    return [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]


def _table(jobs: list[dict], swept: list[str]) -> tuple[list[str], list[list[Any]]]:
    metric_keys: list[str] = []
    for job in jobs:
        for k in job["scores"]:
            if k not in metric_keys:
                metric_keys.append(k)
    header = ["job", *swept, "status", *metric_keys, "num_items", "output_tokens_per_s",
              "ttft_p50_s", "e2e_p50_s"]
    rows = []
    for job in jobs:
        rows.append([job["job"], *[job["overrides"].get(k) for k in swept], job["status"],
                     *[job["scores"].get(k) for k in metric_keys], job["num_items"],
                     job["output_tokens_per_s"], job["ttft_p50_s"], job["e2e_p50_s"]])
    return header, rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plot(jobs: list[dict], swept: list[str], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j["scores"]]
    if not done:
        return False
    x_key = swept[0] if swept else "job"
    xs_raw = [j["overrides"].get(x_key, j["job"]) if swept else j["job"] for j in done]
    xs_num = [_num(str(x)) for x in xs_raw]
    numeric = all(isinstance(x, (int, float)) for x in xs_num)
    if not numeric:
        labels = list(dict.fromkeys(str(x) for x in xs_raw))
        xs_num = [labels.index(str(x)) for x in xs_raw]
    others = swept[1:]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    metric_keys = list(dict.fromkeys(k for j in done for k in j["scores"]))
    series: dict[tuple, list[tuple[float, float]]] = {}
    for j, x in zip(done, xs_num):
        group = tuple(j["overrides"].get(k) for k in others)
        for m in metric_keys:
            if j["scores"].get(m) is not None:
                series.setdefault((m, *group), []).append((x, j["scores"][m]))
    for key, points in series.items():
        points.sort()
        label = key[0] + ("" if not others else
                          " (" + ", ".join(f"{k}={v}" for k, v in zip(others, key[1:])) + ")")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if not numeric:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_xlabel(x_key)
    ax.set_ylabel("score")
    ax.set_title(f"metrics against {x_key}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_summary(sweep_dir: str | Path) -> dict:
    """Write summary.csv/.md/.png into `sweep_dir`; returns {"jobs", "swept", "files"}."""
    from runner.store import atomic_write_text

    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    swept = swept_keys(jobs)
    header, rows = _table(jobs, swept)

    csv_path = sweep_dir / "summary.csv"
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    atomic_write_text(csv_path, buf.getvalue())

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    md_path = sweep_dir / "summary.md"
    atomic_write_text(md_path, f"# Sweep summary: {sweep_dir.name}\n\n"
                               f"Swept: {', '.join(swept) or '(nothing varies)'}\n\n"
                      + "\n".join(md) + "\n")
    files = [str(csv_path), str(md_path)]
    png_path = sweep_dir / "summary.png"
    if _plot(jobs, swept, png_path):
        files.append(str(png_path))
    return {"jobs": jobs, "swept": swept, "files": files}


try:
    from hydra.experimental.callback import Callback
except ImportError:  # summary.py also runs by hand without Hydra
    Callback = object  # type: ignore[assignment,misc]


class SweepSummaryCallback(Callback):  # type: ignore[misc]
    """Hydra callback (conf/config.yaml: hydra.callbacks.summary) writing the sweep summary."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            out = write_summary(sweep_dir)
        except Exception as exc:  # a summary must never turn a finished sweep into a failure
            log.error("could not write the sweep summary in %s: %s", sweep_dir, exc)
            return
        print(f"sweep summary: {', '.join(out['files'])}", flush=True)


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print("\n".join(write_summary(folder)["files"]))
