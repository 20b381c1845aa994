"""`python -m runner`: the command line, the only place that knows Hydra.

    argv -> refused before Hydra starts (one line each): hydra.run.dir (runs go to
            output_root), an experiment outside output_root, a recipe that is not data
         -> recipe=PATH expanded into group choices + a `_recipe_/lock` config node
            (runner/run/recipe.py reads and checks the file)
         -> text values (dataset.template, dataset.system_prompt) quoted for Hydra's grammar,
            so `dataset.template='Q: {question}\nA:'` works as typed
         -> dataset=hf:NAME[:CONFIG[:SPLIT]] / jsonl:PATH / builtin:NAME values registered as
            ConfigStore options of the dataset group under exactly that name (sweeps too);
            task=lmeval:FILE values likewise as options of the task group
            (runner/tasks/cli_specs.py), and every other task= name checked against the
            shipped presets (conf/task/) and hydra.searchpath, so a typo is one line
         -> a run evaluates a task or a dataset: with task=NAME the dataset group is dropped
            (`~dataset`), and a dataset choice or dataset.* value next to task= is refused
         -> hydra/launcher=NAME: a shipped preset needs its plugin, one line otherwise; the
            plugins' schemas move under runner_launcher/ for the presets (runner/launchers.py)
         -> -m without hydra.sweep.dir: a folder no earlier sweep has (runner/sweep.py), given
            to Hydra as hydra.sweep.dir=...; after the launcher returns, the summary when
            Hydra's callback did not write it, and exit 1 when a job's folder is not complete
         -> hydra.main composes the config tree (conf/, shipped inside the package as
            runner/conf) against runner/schemas.py
         -> task(): keys no schema knows (`+sampling.temprature=0.5`) refused, naming the
            nearest known one -> RunConfig dataclasses -> runner.run.run(...) -> the run's
            sweep objective, returned to Hydra's sweepers (optuna, nevergrad, ax)

Hydra treats `dataset=hf:squad` as the name of a config in the dataset group, so before Hydra
starts, every such value on the command line (or in a recipe) becomes a ConfigStore node built
from the matching preset in conf/dataset/ (hf:squad -> squad.yaml, jsonl:... -> jsonl.yaml)
with `source` set to the value. The value stays what the user typed, in the config, in the
sweep's job list and in the recipe.

Recipes: `choices` (group -> option) become overrides; `config` becomes a config node appended
to the defaults list (`+_recipe_=lock`), so every command-line override, before or after
`recipe=`, still wins, and a group chosen on the command line drops the recipe's values for it
(task and dataset are alternatives: choosing one drops the recipe's other). A recipe's
`task=lmeval:...` choice is registered from the task node the recipe holds, so a rerun needs
neither the original file nor the folder it was run from.

Errors: bad input ends with a non-zero exit and one line on stderr (`runner: error: ...`); the
traceback goes to the run's run.log when a run folder exists, or to the terminal with
HYDRA_FULL_ERROR=1. SIGTERM / Ctrl-C end with one line saying how to resume (exit 143 / 130).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from runner.launchers import LauncherError, check_launchers, job_backend
from runner.run.recipe import GROUPS, RecipeError, load_recipe
from runner.sweep import finish_sweep, fresh_sweep_dir, redact_sweep_record
from runner.tasks.cli_specs import SCHEME as TASK_SCHEME
from runner.tasks.cli_specs import register_task_specs
from runner.tasks.yaml_loader import TaskFileError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# An installed wheel carries the tree as the package runner.conf (runner/conf/, setup.py); a
# checkout has it at the top. Hydra reads it as a folder either way (pkg:// would need an
# __init__.py among the YAML files).
INSTALLED_CONF = PACKAGE_DIR / "conf"
CONF_DIR = INSTALLED_CONF if (INSTALLED_CONF / "config.yaml").is_file() else REPO_ROOT / "conf"
RECIPE_GROUP = "_recipe_"
# Presets that a dataset spec's name maps onto (hf:squad and hf:rajpurkar/squad -> squad.yaml).
KNOWN_HF_PRESETS = {"squad": "squad", "rajpurkar/squad": "squad"}
# Free text: taken as typed, never parsed as Hydra's grammar ({, }, commas, quotes, \n).
TEXT_KEYS = ("dataset.template", "dataset.system_prompt")
# The override that removes the dataset group from the defaults when a task is chosen.
DROP_DATASET = "~dataset"
TASK_HINT = ("shipped tasks are the files in conf/task/ (listed by `python -m runner --help`, "
             "described in docs/tasks.md); your own lm-eval file: task=lmeval:PATH.yaml")


class CliError(ValueError):
    """A command line or recipe the runner rejects before Hydra starts."""


# The task layer's errors (runner/tasks/): bad task files, specs, data, templates, sampling,
# few-shot, filters, metrics and scoring; each message is already one line for the user.
TASK_ERRORS = ("TaskFileError", "TaskSpecError", "TaskDataError", "SamplingRuleError",
               "TemplateFieldError", "FewshotError", "ScoringError", "FilterError",
               "MetricError", "NativeError")


# ---------------------------------------------------------------------------------------------
# Command-line parsing


def _parse_args(argv: list[str]):
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    return get_args_parser().parse_args(argv)


def _parse_overrides(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise CliError(str(e).splitlines()[0]) from None


def _group_values(override) -> list[str]:
    """The option names an override of a config group asks for (one, or a sweep's list)."""
    value = override.value()
    if isinstance(value, str):
        return [value]
    items = getattr(value, "list", None)
    return [v for v in items if isinstance(v, str)] if items is not None else []


def hydra_quote(value: str) -> str:
    """`value` as one quoted string of Hydra's override grammar."""
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return "'" + out + "'"


def _quote(value: str) -> str:
    # Option names with characters outside Hydra's unquoted grammar (spaces, commas) are quoted.
    if all(c.isalnum() or c in "_-./:\\+@" for c in value):
        return value
    return hydra_quote(value)


def quote_text_values(argv: list[str]) -> list[str]:
    """dataset.template=... and the like, quoted for Hydra unless the user quoted them."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in TEXT_KEYS and value and \
                not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""):
            arg = f"{key}={hydra_quote(value)}"
        out.append(arg)
    return out


# ---------------------------------------------------------------------------------------------
# dataset=hf:... / jsonl:... / builtin:... as ConfigStore options


def _load_preset(name: str) -> dict:
    from omegaconf import OmegaConf

    path = CONF_DIR / "dataset" / f"{name}.yaml"
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    node.pop("defaults", None)
    return node


def dataset_node(spec: str) -> dict:
    """The dataset config that `dataset=SPEC` means: a preset with `source` set to SPEC."""
    scheme, _, rest = spec.partition(":")
    if scheme == "hf":
        parts = rest.split(":")
        name = parts[0]
        preset = KNOWN_HF_PRESETS.get(name.lower())
        node = _load_preset(preset) if preset else {"preset": "auto"}
        if len(parts) > 1:
            # The spec carries config/split; the preset's own would conflict with them.
            node["hf_config"] = None
            node["split"] = None
        base = name.rstrip("/").rsplit("/", 1)[-1] or name
        node["name"] = Path(base).stem if Path(base).suffix in (".json", ".jsonl", ".csv",
                                                                ".parquet") else base
    elif scheme == "jsonl":
        node = _load_preset("jsonl")
        node["name"] = Path(rest).stem or "jsonl"
    elif scheme == "builtin":
        preset_file = CONF_DIR / "dataset" / f"{rest}.yaml"
        node = _load_preset(rest) if preset_file.is_file() else {"preset": "auto"}
        node["name"] = rest
    else:
        raise CliError(f"dataset={spec}: unknown dataset scheme {scheme!r}; use a preset name "
                       "(see conf/dataset/), hf:NAME[:CONFIG[:SPLIT]], jsonl:PATH or "
                       "builtin:NAME")
    node["source"] = spec
    return node


def register_dataset_specs(values: list[str], cs) -> None:
    """Store each `scheme:...` value as an option of the dataset group, named exactly so."""
    for value in values:
        if ":" not in value:
            continue
        # ConfigStore keeps options in a tree split at "/": a path's folders become subgroups
        # and the file name the leaf, so `dataset/jsonl:a/b.jsonl` is found under that name.
        group, name = f"dataset/{value}".rsplit("/", 1)
        cs.store(group=group, name=name, node=dataset_node(value))


# ---------------------------------------------------------------------------------------------
# Recipes and the checks before Hydra starts


def expand_recipe(argv: list[str], overrides: list[str], cs) -> tuple[list[str], set]:
    """(argv with `recipe=PATH` replaced by the recipe's choices (+ its config node), the
    task=lmeval:... options registered from the recipe's own task node)."""
    recipe_args = [a for a in overrides if a.startswith("recipe=")]
    if not recipe_args:
        return argv, set()
    if len(recipe_args) > 1:
        raise CliError("recipe= given more than once; one recipe per run")
    try:
        recipe = load_recipe(recipe_args[0][len("recipe="):])
    except RecipeError as e:
        raise CliError(str(e)) from None
    others = [o for o in overrides if o != recipe_args[0]]
    user_groups = {o.key_or_group for o in _parse_overrides(quote_text_values(others))
                   if o.key_or_group in GROUPS}
    # task and dataset are alternatives: choosing one on the command line replaces the other
    for one, other in (("task", "dataset"), ("dataset", "task")):
        if one in user_groups:
            user_groups.add(other)
    choices = {g: v for g, v in recipe["choices"].items() if g not in user_groups}
    config = {k: v for k, v in recipe["config"].items() if k not in user_groups}
    if (choices.get("task") or config.get("task")) and \
            (choices.get("dataset") or config.get("dataset")):
        raise CliError(f"{recipe_args[0]}: the recipe names both a task and a dataset; a run "
                       "evaluates one of them (remove the other from choices and config)")
    if config.get("task") and not choices.get("task"):
        raise CliError(f"{recipe_args[0]}: config.task is set but choices names no task; add "
                       "choices.task (the task's option name)")
    registered = set()
    task_choice = choices.get("task", "")
    if task_choice.startswith(TASK_SCHEME) and isinstance(config.get("task"), dict):
        # the recipe holds the task's every resolved value: the rerun needs no file
        group, name = f"task/{task_choice}".rsplit("/", 1)
        cs.store(group=group, name=name, node=config["task"])
        registered.add(task_choice)
    expanded = [f"{g}={_quote(v)}" for g, v in choices.items()]
    if "experiment" in config:
        _check_experiment(config["experiment"])
    if config:
        cs.store(group=RECIPE_GROUP, name="lock", node=config, package="_global_")
        expanded.append(f"+{RECIPE_GROUP}=lock")
    i = argv.index(recipe_args[0])
    return argv[:i] + expanded + argv[i + 1:], registered


def _check_experiment(value: Any) -> None:
    from runner.validation import ConfigError, check_experiment

    try:
        check_experiment(value)
    except ConfigError as e:
        raise CliError(str(e)) from None


def check_overrides(parsed: list) -> None:
    """What Hydra would act on before the task runs: refused here, in one line."""
    for o in parsed:
        key = o.key_or_group
        if key == "hydra.run.dir" and o.value() not in (".", "./"):
            raise CliError(f"hydra.run.dir={o.value()} is not used: every run writes "
                           "<output_root>/<experiment>/<run_id>/; set output_root= (and "
                           "experiment=, run_id=) instead")
        if key == "experiment":
            for v in ([o.value()] if not o.is_sweep_override() else _group_values(o)):
                _check_experiment(v)


def _search_dirs(parsed: list) -> Optional[list[Path]]:
    """The folders of hydra.searchpath=[...] overrides (None: one is not a local folder)."""
    dirs = [CONF_DIR]
    for o in parsed:
        if o.key_or_group != "hydra.searchpath":
            continue
        value = o.value()
        for entry in value if isinstance(value, list) else [value]:
            entry = str(entry)
            if entry.startswith("pkg://"):
                return None  # a package's configs: left to Hydra
            dirs.append(Path(entry[len("file://"):] if entry.startswith("file://") else entry))
    return dirs


def check_task_names(names: list[str], parsed: list, cs) -> None:
    """A task= name that no config folder (conf/task/, hydra.searchpath) holds: one line."""
    dirs = _search_dirs(parsed)
    if dirs is None:
        return
    for name in names:
        if name.startswith(TASK_SCHEME) or _cs_has(cs, f"task/{name}"):
            continue
        if any((d / "task" / f"{name}.yaml").is_file() for d in dirs):
            continue
        known = sorted(p.stem for d in dirs for p in (d / "task").glob("*.yaml")
                       if not p.stem.startswith("_"))
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise CliError(f"task={name}: no such task; {hint}{TASK_HINT}")


def _cs_has(cs, path: str) -> bool:
    from hydra.plugins.config_source import ConfigLoadError

    try:
        return cs.load(path if path.endswith(".yaml") else f"{path}.yaml") is not None
    except ConfigLoadError:
        return False


def check_task_or_dataset(parsed: list) -> bool:
    """True when the command line chooses a task (the dataset group is then dropped); a
    dataset choice or dataset.* value next to it is refused, naming both."""
    values = []
    for o in parsed:
        if o.key_or_group != "task":
            continue
        value = None if o.is_delete() else o.value()
        items = getattr(value, "list", None)
        # Hydra parses `null` (also inside a sweep's list) as None
        values += ["null" if v is None else str(v) for v in (items if items is not None
                                                             else [value])]
    chosen = [v for v in values if v != "null"]
    if not chosen:
        return False
    if len(chosen) != len(values):
        raise CliError(f"task={','.join(values)}: a sweep runs tasks or the dataset group "
                       "(task=null), not both; run them as two sweeps")
    for o in parsed:
        key = o.key_or_group
        if (key == "dataset" or key.startswith("dataset.")) and not o.is_delete():
            typed = o.input_line or f"{key}=..."
            raise CliError(f"{typed} and task={','.join(chosen)} were both given: a run "
                           "evaluates either a task or a dataset (a task run has no dataset "
                           "group); drop one of them")
    return True


def prepare(argv: list[str], cs) -> tuple[list[str], list[str], Any]:
    """(argv ready for Hydra, its overrides, parsed flags); registers dataset and task specs,
    drops the dataset group when a task is chosen."""
    argv = quote_text_values(list(argv))
    args = _parse_args(argv)
    argv, from_recipe = expand_recipe(argv, list(args.overrides), cs)
    args = _parse_args(argv)
    overrides = list(args.overrides)
    parsed = _parse_overrides(overrides)
    check_overrides(parsed)
    try:
        check_launchers([v for o in parsed if o.key_or_group == "hydra/launcher"
                         for v in _group_values(o)])
    except LauncherError as e:
        raise CliError(str(e)) from None
    dataset_values = [v for o in parsed if o.key_or_group == "dataset" for v in _group_values(o)]
    register_dataset_specs(dataset_values, cs)
    task_values = [v for o in parsed if o.key_or_group == "task" for v in _group_values(o)]
    register_task_specs([v for v in task_values if v not in from_recipe], cs)
    check_task_names([v for v in task_values if v != "null"], parsed, cs)
    if check_task_or_dataset(parsed) and DROP_DATASET not in overrides:
        # next to the other overrides: argparse takes them as one run of positionals
        argv.insert(argv.index(overrides[0]), DROP_DATASET)
        overrides.insert(0, DROP_DATASET)
    return argv, overrides, args


def config_store():
    """Hydra's ConfigStore with the run schema and the launcher presets' plugin schemas."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    from runner.launchers import register_launcher_schemas
    from runner.schemas import register_configs

    cs = ConfigStore.instance()
    register_configs(cs)
    Plugins.instance()  # the installed plugins store their launcher schemas now
    register_launcher_schemas(cs)
    return cs


def _compose(overrides: list[str], hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=os.fspath(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides,
                             return_hydra_config=hydra_config)


def compose(argv: list[str]):
    """The DictConfig `python -m runner ARGV` runs (single-run overrides; for tests, --cfg)."""
    _, overrides, _ = prepare(list(argv), config_store())
    return _compose(overrides)


def sweep_dir_override(argv: list[str], overrides: list[str]) -> tuple[list[str], Optional[str]]:
    """(argv, the sweep's folder): a sweep without hydra.sweep.dir gets a folder no earlier
    sweep has (runner/sweep.py), given to Hydra as hydra.sweep.dir=..., so every launcher and
    node writes there and a rerun of the printed command resumes it."""
    parsed = _parse_overrides(overrides)
    for o in parsed:
        if o.key_or_group == "hydra.sweep.dir":
            return argv, os.path.abspath(str(o.value()))
    single = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        planned = str(_compose(single, hydra_config=True).hydra.sweep.dir)
    except Exception:
        return argv, None  # hydra.main composes next and reports the error in its own words
    path = fresh_sweep_dir(planned)
    at = len(argv) - argv[::-1].index(overrides[-1]) if overrides else len(argv)
    return argv[:at] + [f"hydra.sweep.dir={hydra_quote(path)}"] + argv[at:], path


# ---------------------------------------------------------------------------------------------
# After composition


def unknown_keys(cfg) -> list[str]:
    """One line per key of the composed config that no schema field declares (`+key=...`)."""
    from omegaconf import DictConfig, OmegaConf

    lines: list[str] = []

    def walk(node, prefix: str) -> None:
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            return  # free-form mappings (tags) take any key
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            path = f"{prefix}{key}"
            if key not in fields:
                near = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
                hint = f"; did you mean {prefix}{near[0]}?" if near else \
                    f"; known keys: {', '.join(fields)}"
                lines.append(f"{path} is not a config key (no schema declares it){hint}")
                continue
            if OmegaConf.is_missing(node, key):
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                walk(child, f"{path}.")

    walk(cfg, "")
    return lines


def to_run_config(cfg):
    """The composed DictConfig as RunConfig dataclasses; ConfigError on an unknown key."""
    from omegaconf import OmegaConf

    from runner.validation import ConfigError

    lines = unknown_keys(cfg)
    if lines:
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more)
    return OmegaConf.to_object(cfg)


def precheck(argv: list[str]) -> None:
    """Compose as Hydra will and run the checks; Hydra reports its own compose errors."""
    from runner.validation import validate_run

    try:
        composed = compose(argv)
    except CliError:
        raise
    except Exception:
        return  # hydra.main composes next and reports the error in its own words
    validate_run(to_run_config(composed))


def _error_line(exc: BaseException) -> str:
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        return f"{msg} (key: {key})" if key and key not in msg else msg
    msg = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    known = ("ConfigError", "DatasetError", "DatasetFileNotFoundError", "ModelSourceError",
             "CliError", "RunFolderError", "RunInUseError", "EngineSetupError", "RecipeError",
             "SymlinkRefused", "RemoteRequestError", "ClusterError", *TASK_ERRORS)
    text = msg if type(exc).__name__ in known else f"{type(exc).__name__}: {msg}"
    run_dir = getattr(exc, "run_dir", None)
    if run_dir:
        status = getattr(exc, "run_status", "failed")
        text += f" [run folder {run_dir}: manifest status {status}, traceback in run.log]"
    return text


def interrupt_line(exc: BaseException) -> str:
    name = getattr(exc, "signal_name", "SIGINT")
    if getattr(exc, "run_dir", None) is None:
        return f"runner: interrupted ({name}) before the run folder was created; nothing written"
    return (f"runner: interrupted ({name}): {exc.items_done} items kept in "
            f"{exc.run_dir}/predictions.jsonl; resume with: {exc.resume}")


def _make_task(failures: list, command: list[str]):
    def task(cfg) -> Optional[float]:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from runner.run import RunContext, run

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        if multirun:
            redact_sweep_record(Path(str(hc.sweep.dir)))
        ctx = RunContext(
            choices={g: hc.runtime.choices.get(g) for g in GROUPS},
            # the CLI's own overrides (the recipe node, ~dataset: Hydra writes "~dataset=null")
            overrides=[o for o in hc.overrides.task
                       if RECIPE_GROUP not in o and o.split("=")[0] != DROP_DATASET],
            command=command,
            job_dir=hc.runtime.output_dir if multirun else None,
            sweep_dir=str(hc.sweep.dir) if multirun else None,
        )
        prefix = f"job {hc.job.num}: " if multirun else ""
        try:
            run_cfg = to_run_config(cfg)
            run_cfg.engine.backend = job_backend(hc.runtime.choices.get("hydra/launcher"),
                                                 run_cfg.engine.backend)
            result = run(run_cfg, ctx)
        except KeyboardInterrupt as exc:
            print(interrupt_line(exc), file=sys.stderr, flush=True)
            exc.reported = True
            raise  # a sweep stops here too
        except Exception as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"runner: error: {prefix}{_error_line(exc)}", file=sys.stderr, flush=True)
            failures.append(exc)
            return math.nan  # a sweeper records the trial as failed and goes on
        print(f"run {result.run_id}: {result.status}"
              f"{'; ' + result.summary if result.summary else ''}; folder {result.run_dir}",
              flush=True)
        return result.objective if result.objective is not None else math.nan

    return task


def main(argv: Optional[list[str]] = None) -> int:
    import hydra

    from runner.validation import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = ["python", "-m", "runner", *argv]
    cs = config_store()
    sweep_dir = None
    try:
        original = list(argv)
        argv, overrides, args = prepare(argv, cs)
        if args.cfg and not args.multirun:
            precheck(original)
        if args.multirun and not args.cfg:
            argv, sweep_dir = sweep_dir_override(argv, overrides)
    except (CliError, ConfigError, TaskFileError) as exc:
        print(f"runner: error: {exc}", file=sys.stderr)
        return 2

    failures: list = []
    task = _make_task(failures, command)
    started = time.time()
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "runner", *argv]
    try:
        hydra.main(config_path=os.fspath(CONF_DIR), config_name="config",
                   version_base="1.3")(task)()
    except KeyboardInterrupt as exc:
        if not getattr(exc, "reported", False):
            print(interrupt_line(exc), file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 130)
    except ValueError as exc:
        # Hydra's own usage errors (e.g. -m together with --cfg) escape its error reporting;
        # task errors never get here (the task reports them itself).
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    # jobs that ran elsewhere (submitit, ray, joblib) report through their folders
    incomplete = finish_sweep(sweep_dir, started) if sweep_dir else []
    if failures or incomplete:
        if len(failures) > 1:
            print(f"runner: {len(failures)} jobs failed", file=sys.stderr)
        if incomplete and len(incomplete) != len(failures):
            print(f"runner: {len(incomplete)} sweep job(s) did not complete: "
                  f"{'; '.join(incomplete)} (sweep folder {sweep_dir})", file=sys.stderr)
        return 1
    return 0
