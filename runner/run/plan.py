"""What passes between the lifecycle and a mode: the mode's plan, its session, its outcome.

    mode.prepare(cfg, sweep_job) -> Plan
                                        before anything is written or loaded: the work (a Task,
                                        similarity pairs, a workload), its fingerprint (enters
                                        the config hash), manifest entries, run-id fields, the
                                        metric names it will report; sweep_job: this run is
                                        one job of a sweep (a task then records sampling
                                        values it cannot use instead of refusing them)
    mode.check_backend(plan, backend)   after the model loaded, before the folder exists:
                                        refuses a backend the mode cannot use (an embedding
                                        model for eval, a generative one for embed)
    mode.execute(plan, Session) -> Outcome
                                        the work itself; it writes predictions.jsonl through
                                        session.folder, the lifecycle writes metrics.json and
                                        benchmark.json from the Outcome
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Plan:
    work: Any
    fingerprint: str
    manifest: dict  # entries merged into manifest.json (dataset / task / workload)
    id_fields: dict  # run_id_pattern fields: sampling, dataset
    metrics: list[str] = field(default_factory=list)  # score names metrics.json will have
    primary_metric: Optional[str] = None  # the sweep objective when sweep_objective is null


@dataclass
class Session:
    cfg: Any
    folder: Any  # runner.run.folder.RunFolder
    backend: Any  # runner.backends.Backend
    manifest: dict
    session: dict  # this session's entry in manifest["sessions"]
    save_manifest: Callable[[], None]
    make_backend: Callable[[dict], Any]  # a second backend with EngineArgs overrides (bench)
    use_tqdm: bool = True


@dataclass
class Outcome:
    metrics: Optional[dict] = None  # metrics.json's body: "scores" is a flat {name: number}
    benchmark: Optional[dict] = None  # benchmark.json's body
    summary: str = ""  # the console's one line about the result
