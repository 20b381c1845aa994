"""Hydra launcher presets: which plugin each needs, and its schema under the preset.

    conf/hydra/launcher/<preset>.yaml         what the runner ships, on the plugin's own schema
      submitit_slurm   hydra-submitit-launcher  each sweep job is one SLURM job (sbatch array)
      submitit_local   hydra-submitit-launcher  the same executor on this machine (tests, dry runs)
      ray              hydra-ray-launcher       each job is a Ray task on distributed.ray_address;
                                                its engine runs as replicas on that cluster
      joblib           hydra-joblib-launcher    jobs in parallel processes on this machine

    check_launchers(values)        before Hydra starts: a preset whose plugin is not installed
                                   is one line naming the pip command (LauncherError)
    job_backend(launcher, backend) a job under the ray launcher runs its engine as Ray replicas
    register_launcher_schemas(cs)  after Hydra has loaded its plugins: each installed plugin's
                                   schema moves from hydra/launcher/<name> (where our preset of
                                   the same name would shadow it, with Hydra's deprecated
                                   "automatic schema matching") to runner_launcher/<name>,
                                   which the preset extends; so hydra.launcher.* keys are
                                   type-checked against the plugin's dataclass as usual

The `cs` passed in is Hydra's ConfigStore (runner/cli.py, the only Hydra importer, owns it).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

SCHEMA_GROUP = "runner_launcher"


@dataclass(frozen=True)
class LauncherPlugin:
    distribution: str  # the PyPI name
    module: str  # the plugin's package under hydra_plugins
    version: str  # the version the runner is tested with
    extra: str  # pip install 'runner[EXTRA]' brings it too


PRESETS = {
    "submitit_slurm": LauncherPlugin("hydra-submitit-launcher",
                                     "hydra_plugins.hydra_submitit_launcher", "1.2.0", "slurm"),
    "submitit_local": LauncherPlugin("hydra-submitit-launcher",
                                     "hydra_plugins.hydra_submitit_launcher", "1.2.0", "slurm"),
    "ray": LauncherPlugin("hydra-ray-launcher", "hydra_plugins.hydra_ray_launcher", "1.2.2",
                          "ray-launcher"),
    "joblib": LauncherPlugin("hydra-joblib-launcher", "hydra_plugins.hydra_joblib_launcher",
                             "1.2.0", "joblib"),
}


class LauncherError(ValueError):
    """A launcher preset the runner cannot use; one line naming the fix."""


def installed(preset: str) -> bool:
    plugin = PRESETS[preset]
    try:
        return importlib.util.find_spec(plugin.module) is not None
    except (ImportError, ValueError):
        return False


def check_launchers(values: list[str]) -> None:
    """`hydra/launcher=NAME` values of the command line: a shipped preset needs its plugin."""
    for value in values:
        plugin = PRESETS.get(value)
        if plugin is None or installed(value):
            continue
        raise LauncherError(
            f"hydra/launcher={value}: the Hydra plugin {plugin.distribution} is not installed: "
            f"pip install '{plugin.distribution}=={plugin.version}' (or pip install "
            f"'runner[{plugin.extra}]')")


def register_launcher_schemas(cs) -> list[str]:
    """Move each installed plugin's launcher schema to runner_launcher/<name>; returns names."""
    moved = []
    launchers = cs.repo.get("hydra", {}).get("launcher", {})
    for name in PRESETS:
        entry = launchers.get(f"{name}.yaml")
        if entry is None:
            # moved already (a second call in this process), or the plugin is missing
            if cs.repo.get(SCHEMA_GROUP, {}).get(f"{name}.yaml") is not None:
                moved.append(name)
            continue
        cs.store(group=SCHEMA_GROUP, name=name, node=entry.node, provider=entry.provider)
        del launchers[f"{name}.yaml"]
        moved.append(name)
    return moved


def job_backend(launcher: str | None, backend: str) -> str:
    """The engine backend of one sweep job: under hydra/launcher=ray the job is a Ray task
    holding one CPU (conf/hydra/launcher/ray.yaml), so its local engine runs as Ray replicas
    with their own GPUs (engine.backend=ray); anything else stays as configured."""
    if launcher == "ray" and backend == "local":
        return "ray"
    return backend
