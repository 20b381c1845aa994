"""Recipes are data: reading and checking a recipe file, and writing a run's own recipe.yaml.

    recipe file (YAML) --load_recipe--> {"choices": {group: option}, "config": {...}}
      read within runner/yaml_limits.py's bounds (unreadable, not UTF-8, too deep, alias
      bombs: one line naming the file and line), then checks, each refused with one line
      naming the key:
        - only recipe_version / description / choices / config at the top
        - choices name groups (model, engine, sampling, dataset, task) with option names
          ("..": refused, except in a dataset spec or a task=lmeval: spec, whose path is data)
        - config carries no Hydra-special key anywhere (_target_, _args_, _partial_,
          _recursive_, _convert_, defaults, ...), so no object is ever built from a recipe
        - config's `hydra` section holds only the documented keys: hydra.sweeper.params (a
          sweep's values) and hydra.callbacks.<name> whose _target_ is one of the project's
          own callbacks (ALLOWED_CALLBACKS)
      recipe_version 1 files (before `limit` moved to the top) have dataset.limit read as limit.

    RunConfig (plain dict) + group choices --recipe_document--> recipe.yaml: every resolved
      value, secrets as environment references (runner/run/secrets.py), no storage keys.

The CLI (runner/cli.py) turns the choices into overrides and the config into a config node;
nothing here imports Hydra.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runner.run.secrets import recipe_refs
from runner.yaml_limits import load_bounded, read_yaml_text, yaml_error

RECIPE_VERSION = 2
GROUPS = ("model", "engine", "sampling", "dataset", "task")
RECIPE_KEYS = {"recipe_version", "choices", "config", "description"}
# Keys a recipe never carries: they say where a run is stored, and a rerun is a new run.
RECIPE_DROP_KEYS = ("output_root", "run_id", "run_id_pattern", "resume")
# The Hydra keys a recipe may set, and the callbacks it may name.
ALLOWED_HYDRA_KEYS = ("sweeper.params", "callbacks")
ALLOWED_CALLBACKS = ("runner.summary.SweepSummaryCallback",)


class RecipeError(ValueError):
    """A recipe file the runner refuses; the message is one line naming the key."""


class _Located(ValueError):
    """runner/yaml_limits.py's "PATH[:LINE]: problem", made a RecipeError by load_recipe."""


def _special(key: Any) -> bool:
    k = str(key)
    return k == "defaults" or (len(k) > 2 and k.startswith("_") and k.endswith("_"))


def _check_data(node: Any, path: str, where: str) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if _special(k):
                raise RecipeError(f"{where}: {p} is not allowed: a recipe is data and never "
                                  "names code to run or configs to load (remove the key)")
            _check_data(v, p, where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_data(v, f"{path}[{i}]", where)


def _check_hydra(hydra: Any, where: str) -> None:
    if not isinstance(hydra, dict):
        raise RecipeError(f"{where}: config.hydra must be a mapping")
    for key, value in hydra.items():
        if key == "sweeper" and isinstance(value, dict) and set(value) <= {"params"}:
            params = value.get("params") or {}
            bad = [k for k, v in params.items() if isinstance(v, (dict, list))]
            if not isinstance(params, dict) or bad:
                raise RecipeError(f"{where}: config.hydra.sweeper.params maps keys to sweep "
                                  f"strings (e.g. 'sampling.temperature: 0.2,0.7')")
            continue
        if key == "callbacks" and isinstance(value, dict):
            for name, cb in value.items():
                target = cb.get("_target_") if isinstance(cb, dict) else None
                if target not in ALLOWED_CALLBACKS or set(cb) != {"_target_"}:
                    raise RecipeError(
                        f"{where}: config.hydra.callbacks.{name} is not allowed: recipes may "
                        f"name only the project's callbacks ({', '.join(ALLOWED_CALLBACKS)}), "
                        "without arguments")
            continue
        raise RecipeError(f"{where}: config.hydra.{key} is not allowed in a recipe; allowed: "
                          + ", ".join(f"hydra.{k}" for k in ALLOWED_HYDRA_KEYS))


def check_recipe_config(config: dict, where: str) -> None:
    """Refuse anything in a recipe's config that is not plain data (see the module doc)."""
    hydra = config.get("hydra")
    rest = {k: v for k, v in config.items() if k != "hydra"}
    _check_data(rest, "config", where)
    if hydra is not None:
        _check_hydra(hydra, where)


def _check_choices(choices: Any, where: str) -> dict:
    if not isinstance(choices, dict) or set(choices) - set(GROUPS):
        raise RecipeError(f"{where}: 'choices' maps groups {list(GROUPS)} to option names")
    out = {}
    for group, option in choices.items():
        if option is None:
            continue
        if not isinstance(option, (str, int, float)) or isinstance(option, bool):
            raise RecipeError(f"{where}: choices.{group} must be an option name, got "
                              f"{type(option).__name__}")
        option = str(option)
        spec = group == "dataset" or (group == "task" and option.startswith("lmeval:"))
        if not spec and (".." in Path(option).parts or option.startswith("/")):
            raise RecipeError(f"{where}: choices.{group}={option!r} is not an option name of "
                              f"conf/{group}/")
        out[group] = option
    return out


def load_recipe(path: str) -> dict:
    """{"choices", "config"} of a recipe file; RecipeError (one line) when it is refused."""
    where = f"recipe={path}"
    p = Path(path).expanduser()
    if not p.exists():
        raise RecipeError(f"{where}: file not found")
    try:
        text = read_yaml_text(p, _Located, "recipe file")
        doc = load_bounded(text, p, _Located) or {}
    except _Located as e:
        raise RecipeError(f"recipe={e}") from None
    except yaml.YAMLError as e:
        line, problem = yaml_error(e, text)
        raise RecipeError(f"{where}{f':{line}' if line else ''}: not valid YAML ({problem})"
                          ) from None
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: expected a mapping with 'choices' and 'config'")
    unknown = set(doc) - RECIPE_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: "
                          f"{sorted(RECIPE_KEYS)}")
    choices = _check_choices(doc.get("choices") or {}, where)
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise RecipeError(f"{where}: 'config' must be a mapping of config values")
    check_recipe_config(config, where)
    if doc.get("recipe_version", RECIPE_VERSION) == 1:
        config = _upgrade_v1(config)
    return {"choices": choices, "config": config}


def _upgrade_v1(config: dict) -> dict:
    # Version 1 kept the item limit under dataset; it is the top-level `limit` now.
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and "limit" in dataset:
        config = {**config, "dataset": {k: v for k, v in dataset.items() if k != "limit"}}
        if dataset["limit"] is not None:
            config.setdefault("limit", dataset["limit"])
    return config


def recipe_document(config: dict, choices: dict) -> dict:
    """A recipe that reruns this run: the group choices plus every resolved value."""
    config = {k: v for k, v in config.items() if k not in RECIPE_DROP_KEYS}
    return {
        "recipe_version": RECIPE_VERSION,
        "choices": {g: choices[g] for g in GROUPS if choices.get(g) is not None},
        "config": recipe_refs(config),
    }
