"""`task=lmeval:...` on the command line: a user's lm-eval file as an option of the task group.

Hydra reads `task=lmeval:path/to/task.yaml` as the name of a config in the `task` group, so
before Hydra starts the CLI hands every such value to `register_task_specs`, which parses the
file with runner/tasks/yaml_loader.py, checks the node against TaskConfig (types included) and
stores it in the ConfigStore under exactly that name; sweeps (`task=lmeval:a.yaml,gsm8k`) work
the same way. Two forms:

    lmeval:FILE.yaml       the task or group the file defines (names it uses are looked up in
                           the file's folder, recursively, as lm-eval's --include_path)
    lmeval:FOLDER/NAME     a task, group or tag named NAME defined under FOLDER

Values without the `lmeval:` prefix (conf/task/ presets, Hydra searchpath entries) are left to
Hydra.
"""
from __future__ import annotations

from pathlib import Path

from runner.tasks.yaml_loader import TaskFileError, lmeval_node

SCHEME = "lmeval:"


def task_node(spec: str) -> dict:
    """The TaskConfig-shaped node that `task=SPEC` stands for (SPEC starts with lmeval:)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from runner.tasks.config import TaskConfig

    if not spec.startswith(SCHEME):
        raise TaskFileError(f"task={spec}: not an lm-eval file spec; use lmeval:FILE.yaml or "
                            "lmeval:FOLDER/NAME")
    rest = spec[len(SCHEME):]
    if not rest:
        raise TaskFileError(f"task={spec}: names no file; use lmeval:FILE.yaml")
    path = Path(rest).expanduser()
    if path.is_file():
        node = lmeval_node(path)
    elif path.is_dir():
        raise TaskFileError(f"task={spec}: {path} is a folder; name a file "
                            f"(lmeval:{rest.rstrip('/')}/FILE.yaml) or a task in it "
                            f"(lmeval:{rest.rstrip('/')}/NAME)")
    elif path.parent.is_dir() and path.suffix not in (".yaml", ".yml"):
        node = lmeval_node(path.parent, path.name)
    else:
        raise TaskFileError(f"task={spec}: no such task file: {path.absolute()}")
    try:
        # typed as the run will type it (to_object: a required key left out fails here too)
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), node))
    except MissingMandatoryValue as e:
        raise TaskFileError(f"task={spec}: {e.full_key} is required but not set") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise TaskFileError(f"task={spec}: {msg}" + (f" (key: {key})" if key else "")) from None
    return node


def register_task_specs(values: list[str], cs) -> None:
    """Store each `lmeval:` value as an option of the task group, named exactly so."""
    for value in values:
        if not value.startswith(SCHEME):
            continue
        # The ConfigStore splits option names at "/" into subgroups (as for dataset=jsonl:...).
        group, name = f"task/{value}".rsplit("/", 1)
        cs.store(group=group, name=name, node=task_node(value))
