"""`python -m runner`: the command line, the only place that knows Hydra.

    argv -> recipe=PATH expanded into group choices + a `_recipe_/lock` config node
         -> dataset=hf:NAME[:CONFIG[:SPLIT]] / jsonl:PATH / builtin:NAME values registered as
            ConfigStore options of the dataset group under exactly that name (sweeps too)
         -> (with --cfg) compose once more here and run the JSON Schema checks
         -> hydra.main composes conf/ against runner/schemas.py
         -> task(): DictConfig -> RunConfig dataclasses -> runner.app.run(...)

Hydra treats `dataset=hf:squad` as the name of a config in the dataset group, so before Hydra
starts, every such value on the command line (or in a recipe) becomes a ConfigStore node built
from the matching preset in conf/dataset/ (hf:squad -> squad.yaml, jsonl:... -> jsonl.yaml)
with `source` set to the value. The value stays what the user typed, in the config, in the
sweep's job list and in the recipe.

Recipes: a YAML file with `choices` (group -> option, as on the command line) and `config`
(values set on top of the chosen presets; a run's own recipe.yaml holds every resolved value).
The choices become overrides; the values become a config node appended to the defaults list
(`+_recipe_=lock`), so every command-line override, before or after `recipe=`, still wins, and
a group chosen on the command line drops the recipe's values for that group.

Errors: bad input ends with a non-zero exit and one line on stderr (`runner: error: ...`); the
traceback goes to the run's run.log when a run folder exists, or to the terminal with
HYDRA_FULL_ERROR=1. Hydra's own compose errors (an unknown option or key) keep Hydra's short
message.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
GROUPS = ("model", "engine", "sampling", "dataset")
RECIPE_GROUP = "_recipe_"
RECIPE_KEYS = {"recipe_version", "choices", "config", "description"}
# Presets that a dataset spec's name maps onto (hf:squad and hf:rajpurkar/squad -> squad.yaml).
KNOWN_HF_PRESETS = {"squad": "squad", "rajpurkar/squad": "squad"}


class CliError(ValueError):
    """A command line or recipe the runner rejects before Hydra starts."""


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
        node["name"] = name.rstrip("/").rsplit("/", 1)[-1] or name
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
# Recipes


def load_recipe(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CliError(f"recipe={path}: file not found")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CliError(f"recipe={path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise CliError(f"recipe={path}: expected a mapping with 'choices' and 'config'")
    unknown = set(doc) - RECIPE_KEYS
    if unknown:
        raise CliError(f"recipe={path}: unknown keys {sorted(unknown)}; allowed: "
                       f"{sorted(RECIPE_KEYS)}")
    choices = doc.get("choices") or {}
    config = doc.get("config") or {}
    if not isinstance(choices, dict) or set(choices) - set(GROUPS):
        raise CliError(f"recipe={path}: 'choices' maps groups {list(GROUPS)} to option names")
    if not isinstance(config, dict):
        raise CliError(f"recipe={path}: 'config' must be a mapping of config values")
    return {"choices": {k: str(v) for k, v in choices.items()}, "config": config}


def _quote(value: str) -> str:
    # Option names with characters outside Hydra's unquoted grammar (spaces, commas) are quoted.
    if all(c.isalnum() or c in "_-./:\\+@" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand_recipe(argv: list[str], overrides: list[str], cs) -> list[str]:
    """argv with `recipe=PATH` replaced by the recipe's choices (+ its config node)."""
    recipe_args = [a for a in overrides if a.startswith("recipe=")]
    if not recipe_args:
        return argv
    if len(recipe_args) > 1:
        raise CliError("recipe= given more than once; one recipe per run")
    recipe = load_recipe(recipe_args[0][len("recipe="):])
    others = [o for o in overrides if o != recipe_args[0]]
    user_groups = {o.key_or_group for o in _parse_overrides(others)
                   if o.key_or_group in GROUPS}
    expanded = [f"{g}={_quote(v)}" for g, v in recipe["choices"].items() if g not in user_groups]
    config = {k: v for k, v in recipe["config"].items() if k not in user_groups}
    if config:
        cs.store(group=RECIPE_GROUP, name="lock", node=config, package="_global_")
        expanded.append(f"+{RECIPE_GROUP}=lock")
    i = argv.index(recipe_args[0])
    return argv[:i] + expanded + argv[i + 1:]


# ---------------------------------------------------------------------------------------------
# Checks for --cfg (Hydra prints the config without calling the task)


def prepare(argv: list[str], cs) -> tuple[list[str], list[str], Any]:
    """(argv with the recipe expanded, its overrides, parsed flags); registers dataset specs."""
    args = _parse_args(argv)
    argv = expand_recipe(argv, list(args.overrides), cs)
    args = _parse_args(argv)
    overrides = list(args.overrides)
    dataset_values = [v for o in _parse_overrides(overrides) if o.key_or_group == "dataset"
                      for v in _group_values(o)]
    register_dataset_specs(dataset_values, cs)
    return argv, overrides, args


def compose(argv: list[str]):
    """The DictConfig `python -m runner ARGV` runs (single-run overrides; for tests, --cfg)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from runner.schemas import register_configs

    cs = ConfigStore.instance()
    register_configs(cs)
    _, overrides, _ = prepare(list(argv), cs)
    with initialize_config_dir(config_dir=os.fspath(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def precheck(argv: list[str]) -> None:
    """Compose as Hydra will and run the JSON Schema checks; Hydra reports compose errors."""
    from omegaconf import OmegaConf

    from runner.validation import validate_run

    try:
        run_cfg = OmegaConf.to_object(compose(argv))
    except CliError:
        raise
    except Exception:
        return  # hydra.main composes next and reports the error in its own words
    validate_run(run_cfg)


# ---------------------------------------------------------------------------------------------
# The task Hydra calls


def _error_line(exc: BaseException) -> str:
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        return f"{msg} (key: {key})" if key and key not in msg else msg
    msg = str(exc).strip() or type(exc).__name__
    known = ("ConfigError", "DatasetError", "DatasetFileNotFoundError", "ModelSourceError",
             "CliError")
    text = msg if type(exc).__name__ in known else f"{type(exc).__name__}: {msg}"
    run_dir = getattr(exc, "run_dir", None)
    if run_dir:
        text += f" [run folder {run_dir}: manifest status failed, traceback in run.log]"
    return text


def _make_task(failures: list, command: list[str]):
    def task(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        from runner.app import RunContext, run

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        ctx = RunContext(
            choices={g: hc.runtime.choices.get(g) for g in GROUPS},
            overrides=[o for o in hc.overrides.task if RECIPE_GROUP not in o],
            command=command,
            job_dir=hc.runtime.output_dir if multirun else None,
        )
        try:
            run_cfg = OmegaConf.to_object(cfg)
            result = run(run_cfg, ctx)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            prefix = f"job {hc.job.num}: " if multirun else ""
            print(f"runner: error: {prefix}{_error_line(exc)}", file=sys.stderr, flush=True)
            failures.append(exc)
            return None
        scores = ", ".join(f"{k}={v:.2f}" for k, v in ((result.metrics or {}).get("scores")
                                                       or {}).items())
        print(f"run {result.run_id}: {result.status}{'; ' + scores if scores else ''}; "
              f"folder {result.run_dir}", flush=True)
        return None

    return task


def main(argv: Optional[list[str]] = None) -> int:
    import hydra
    from hydra.core.config_store import ConfigStore

    from runner.schemas import register_configs
    from runner.validation import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = ["python", "-m", "runner", *argv]
    cs = ConfigStore.instance()
    register_configs(cs)
    try:
        original = list(argv)
        argv, overrides, args = prepare(argv, cs)
        if args.cfg and not args.multirun:
            precheck(original)
    except (CliError, ConfigError) as exc:
        print(f"runner: error: {exc}", file=sys.stderr)
        return 2

    failures: list = []
    task = _make_task(failures, command)
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "runner", *argv]
    try:
        hydra.main(config_path=os.fspath(CONF_DIR), config_name="config",
                   version_base="1.3")(task)()
    except ValueError as exc:
        # Hydra's own usage errors (e.g. -m together with --cfg) escape its error reporting;
        # task errors never get here (the task reports them itself).
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    if failures:
        if len(failures) > 1:
            print(f"runner: {len(failures)} jobs failed", file=sys.stderr)
        return 1
    return 0
