"""lm-eval task files -> `task` config nodes (dicts shaped like runner.tasks.config.TaskConfig).

    lmeval_node(path[, name]) -> build_index(path's folder, recursively, as lm-eval's
        --include_path) -> the entry for the file's task/group (or `name`: a task, group or tag
        of that folder) -> node_for(entry): includes merged (local keys win), a group's members
        resolved by name (tasks, groups, tags: a tag stands for its tasks, sorted), the group's
        non-structural keys applied to every member as lm-eval does, inline members namespaced
        "group::name" -> a dict for the ConfigStore (runner/tasks/cli_specs.py).

Files are read with a safe YAML loader, within runner/yaml_limits.py's bounds (depth, values
after alias expansion), so any file is a task or one line naming the file. `!function` is kept
as a marker until the end and then refused with one line naming the file and the key, unless it
names one of lm-eval's own module files (runner/tasks/natives.py maps those to native twins);
nothing is imported or executed.
Every key is checked against the schema: an unknown or unsupported key is an error naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from runner.tasks.config import (AggMetricConfig, FewshotConfig, FilterStep, GenerationKwargs,
                                 MetricConfig, TaskConfig)
from runner.tasks.natives import NATIVES, native_for_function_ref
from runner.yaml_limits import load_bounded, read_yaml_text, yaml_error

GROUP_FIELDS = {"group", "group_alias", "task", "aggregate_metric_list", "metadata"}
TASK_FIELDS = {f.name for f in fields(TaskConfig)} - {"subtasks", "group", "group_alias",
                                                       "aggregate_metric_list"}
# lm-eval keys this runner does not implement, with what to do instead.
UNSUPPORTED = {
    "class": "Python task classes are not supported (task files run no code)",
    "custom_dataset": "custom dataset functions are not supported; use dataset_path",
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "use_prompt": "promptsource prompts are not supported; write doc_to_text",
    "unsafe_code": "tasks that execute model-written code are not supported",
    "task_list": "task_list is not supported; write one task per file",
}
_NESTED_LISTS = {"metric_list": MetricConfig, "aggregate_metric_list": AggMetricConfig}
_NESTED_DICTS = {"fewshot_config": FewshotConfig, "generation_kwargs": GenerationKwargs}


class TaskFileError(ValueError):
    """A task file (or a name in it) the runner cannot use; the message is one line."""


@dataclass(frozen=True)
class _FunctionRef:
    spec: str  # "utils.process_docs"
    base_dir: Path  # the folder of the file that wrote it


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus `!function` (as an inert marker); registered on this class only."""


_SafeLoader.add_constructor(
    "!function", lambda loader, node: _FunctionRef(loader.construct_scalar(node), Path(".")))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def read_yaml(path: Path) -> dict:
    text = read_yaml_text(path, TaskFileError, "task file")
    try:
        cfg = load_bounded(text, path, TaskFileError, _SafeLoader)
    except yaml.YAMLError as e:
        line, problem = yaml_error(e, text)
        where = f":{line}" if line is not None else ""
        raise TaskFileError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(cfg, dict):
        got = "an empty file" if cfg is None else type(cfg).__name__
        raise TaskFileError(f"{path}: expected a mapping of task keys (task: NAME, "
                            f"dataset_path: ...), got {got}")
    return _rebase(cfg, path.parent)


def _rebase(obj: Any, base: Path) -> Any:
    if isinstance(obj, _FunctionRef):
        return _FunctionRef(obj.spec, base)
    if isinstance(obj, dict):
        return {k: _rebase(v, base) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, base) for v in obj]
    return obj


def load_task_file(path: Path, _seen: Optional[set] = None) -> dict:
    """The file's mapping with its `include`s merged in (lm-eval's order: includes first,
    later includes over earlier ones, the file's own keys last)."""
    path = Path(path).expanduser().resolve()
    seen = set() if _seen is None else _seen
    if path in seen:
        raise TaskFileError(f"{path}: include cycle")
    seen.add(path)
    cfg = read_yaml(path)
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str) or not inc:
            raise TaskFileError(f"{path}: include must be a file name or a list of file names, "
                                f"got {_short(inc)}")
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise TaskFileError(f"{path}: include {inc!r}: no such file {inc_path}")
        inc_cfg = load_task_file(inc_path, seen)
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged


# --------------------------------------------------------------------------- the index


@dataclass
class Entry:
    name: str
    kind: str  # task | group | tag
    path: Optional[Path]
    cfg: dict = field(default_factory=dict)
    members: set = field(default_factory=set)  # a tag's tasks


def build_index(root: Path) -> tuple[dict[str, Entry], dict[Path, str]]:
    """Every task, group and tag defined under `root` ({name: Entry}), and the files that
    could not be read ({path: error}); the first definition of a name wins, as in lm-eval."""
    index: dict[str, Entry] = {}
    errors: dict[Path, str] = {}
    for path in sorted(Path(root).glob("**/*.yaml"), key=lambda p: p.as_posix()):
        if any(part in ("__pycache__", ".ipynb_checkpoints") for part in path.parts):
            continue
        try:
            cfg = load_task_file(path)
            _register(cfg, path.resolve(), index)
        except TaskFileError as e:
            errors[path.resolve()] = str(e)
    return index, errors


def _register(cfg: dict, path: Path, index: dict[str, Entry]) -> None:
    if "group" in cfg:
        if not isinstance(cfg["group"], str):
            raise TaskFileError(f"{path}: group must be a name (a string), got "
                                f"{_short(cfg['group'])}")
        index.setdefault(cfg["group"], Entry(cfg["group"], "group", path, cfg))
    elif isinstance(cfg.get("task"), str):
        name = cfg["task"]
        tags = cfg.get("tag")
        tags = [tags] if isinstance(tags, str) else tags or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise TaskFileError(f"{path} (task {name}): tag must be a name or a list of names, "
                                f"got {_short(cfg.get('tag'))}")
        if name in index:
            return
        index[name] = Entry(name, "task", path, cfg)
        for tag in tags:
            index.setdefault(tag, Entry(tag, "tag", None)).members.add(name)


def lmeval_node(path: str | Path, name: Optional[str] = None) -> dict:
    """The config node for an lm-eval file (or for `name` defined in the folder `path`)."""
    path = Path(path).expanduser()
    name_given = name
    if name is None:
        if not path.is_file():
            raise TaskFileError(f"{path}: no such task file")
        cfg = load_task_file(path)
        key = "group" if "group" in cfg else "task"
        name = cfg.get(key)
        if name is None:
            raise TaskFileError(f"{path.resolve()}: the file names no task (a `task: NAME` "
                                "or `group: NAME` key)")
        if not isinstance(name, str):
            raise TaskFileError(f"{path.resolve()}: {key} must be a name (a string), got "
                                f"{_short(name)}" + ("; a group file sets `group: NAME` and "
                                                     "lists its members under `task`"
                                                     if key == "task" else ""))
        root = path.resolve().parent
    else:
        if not path.is_dir():
            raise TaskFileError(f"{path}: no such folder of task files")
        root = path.resolve()
    index, errors = build_index(root)
    if name_given is None and path.resolve() in errors:
        raise TaskFileError(errors[path.resolve()])  # the file itself is broken
    if name not in index:
        broken = f"; unreadable files: {'; '.join(errors.values())}" if errors else ""
        raise TaskFileError(f"{root}: no task, group or tag named {name!r}{broken}")
    return _node_for(index[name], index, {}, errors)


# --------------------------------------------------------------------------- nodes


def _node_for(entry: Entry, index: dict, overrides: dict, errors: dict) -> dict:
    if entry.kind == "tag":
        members = {t: _task_node(index[t], index, {"task": t, **overrides})
                   for t in sorted(entry.members)}
        return {"group": entry.name, "subtasks": members}
    if entry.kind == "group":
        return _group_node(entry.name, entry.cfg, entry.path, index, overrides, errors)
    return _task_node(entry, index, overrides)


def _task_node(entry: Entry, index: dict, overrides: dict) -> dict:
    cfg = {**entry.cfg, **overrides}
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    _unsupported(cfg, entry.path)
    return check_task_keys(_resolve_functions(cfg, entry.path, cfg.get("task")), entry.path)


def _unsupported(cfg: dict, where: Any) -> None:
    for key in cfg:
        if key in UNSUPPORTED:
            raise TaskFileError(f"{where} (task {cfg.get('task')}): key {key}: "
                                f"{UNSUPPORTED[key]}")


def _group_node(name: str, cfg: dict, path: Optional[Path], index: dict, overrides: dict,
                errors: dict, chain: tuple = ()) -> dict:
    where = path or f"group {name}"
    if name in chain:
        raise TaskFileError(f"{where}: group {name} contains itself "
                            f"({' -> '.join((*chain, name))}); remove it from its members")
    chain = (*chain, name)
    node = {k: v for k, v in cfg.items() if k in GROUP_FIELDS - {"task"}}
    node["group"] = name
    for key in set(node) - {"group"}:
        node[key] = _resolve_functions(node[key], path, name)
    own = {k: v for k, v in cfg.items() if k not in GROUP_FIELDS and k != "tag"}
    merged = {**own, **overrides}
    members = cfg.get("task")
    members = [members] if isinstance(members, str) else members or []
    if not isinstance(members, list):
        raise TaskFileError(f"{where}: group {name}: `task` must list the group's members")
    subtasks: dict[str, dict] = {}
    for item in members:
        for child_name, child in _member(item, name, where, index, merged, errors, chain):
            if child_name in subtasks:
                raise TaskFileError(f"{where}: group {name}: {child_name!r} appears twice")
            subtasks[child_name] = child
    if not subtasks:
        raise TaskFileError(f"{where}: group {name} has no members")
    node["subtasks"] = subtasks
    return node


def _member(item: Any, group: str, where: Any, index: dict, overrides: dict, errors: dict,
            chain: tuple):
    """(name, node) pairs for one entry of a group's `task:` list (lm-eval's rules)."""
    if isinstance(item, dict) and "group" in item:
        if not isinstance(item["group"], str):
            raise TaskFileError(f"{where}: group {group}: a member's group must be a name, got "
                                f"{_short(item['group'])}")
        inline = {k: v for k, v in item.items() if k != "group"}
        if item["group"] in index:
            entry = index[item["group"]]
            yield entry.name, _group_node(entry.name, entry.cfg, entry.path, index,
                                          {**overrides, **inline}, errors, chain)
        else:
            full = f"{group}::{item['group']}"
            yield full, _group_node(full, item, None, index, overrides, errors, chain)
        return
    if isinstance(item, dict):
        if "task" not in item:
            raise TaskFileError(f"{where}: group {group}: a member needs a `task` or `group` "
                                f"key, got {sorted(map(str, item))}")
        base, item_overrides = item["task"], {**overrides, **item}
        if not isinstance(base, str):
            raise TaskFileError(f"{where}: group {group}: a member's task must be a name, got "
                                f"{_short(base)}")
    elif isinstance(item, str):
        base, item_overrides = item, dict(overrides)
    else:
        raise TaskFileError(f"{where}: group {group}: unsupported member {_short(item)}; a "
                            "member is a name or a mapping with `task` or `group`")
    if base not in index:
        if isinstance(item, dict):  # an inline task, defined right here
            full = f"{group}::{base}"
            _unsupported(item_overrides, where)
            yield full, check_task_keys(
                _resolve_functions({**item_overrides, "task": full}, None, full), where)
            return
        broken = next((e for p, e in errors.items() if p.stem == base), None)
        hint = f" (a file failed to load: {broken})" if broken else ""
        raise TaskFileError(f"{where}: group {group}: unknown task, group or tag {base!r}{hint}")
    entry = index[base]
    if entry.kind == "group":
        yield base, _group_node(base, entry.cfg, entry.path, index, item_overrides, errors,
                                chain)
    elif entry.kind == "tag":
        for task in sorted(entry.members):
            yield task, _task_node(index[task], index, {"task": task, **item_overrides})
    else:
        yield base, _task_node(entry, index, {"task": base, **item_overrides})


def _resolve_functions(obj: Any, path: Optional[Path], task: Any, key: str = "") -> Any:
    if isinstance(obj, _FunctionRef):
        module, _, func = obj.spec.rpartition(".")
        module_file = obj.base_dir / (module.replace(".", "/") + ".py")
        mapped = native_for_function_ref(module_file, func) if module else None
        if mapped is not None:
            return mapped
        top = key.split(".")[0].split("[")[0]
        allowed = sorted(f"native:{n}" for n, e in NATIVES.items() if e.key == top)
        instead = f"native functions for {top}: {', '.join(allowed)}" if allowed else \
            "a Jinja template or a field name"
        raise TaskFileError(f"{path or f'task {task}'}: key {key}: `!function {obj.spec}` is "
                            f"refused (task files run no code here); use {instead}")
    if isinstance(obj, dict):
        return {k: _resolve_functions(v, path, task, f"{key}.{k}" if key else str(k))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_functions(v, path, task, f"{key}[{i}]") for i, v in enumerate(obj)]
    return obj


# --------------------------------------------------------------------------- key checks


def _unknown(keys, allowed: set, where: Any, what: str) -> None:
    for key in keys:
        if key in UNSUPPORTED and what == "task":
            raise TaskFileError(f"{where}: key {key}: {UNSUPPORTED[key]}")
        if key not in allowed:
            raise TaskFileError(f"{where}: unknown {what} key {key!r}; allowed: "
                                f"{', '.join(sorted(allowed))}")


def check_task_keys(cfg: dict, where: Any) -> dict:
    """`cfg` normalized for the schema (until as a list, a string metric as an entry), after
    checking every key, nested ones too; raises TaskFileError naming the first bad key."""
    where = f"{where} (task {cfg.get('task')})" if cfg.get("task") else where
    _unknown(cfg, TASK_FIELDS, where, "task")
    out = dict(cfg)
    for key, schema in _NESTED_LISTS.items():
        if out.get(key) is None:
            continue
        if not isinstance(out[key], list):
            raise TaskFileError(f"{where}: {key} must be a list of mappings")
        items = []
        for i, item in enumerate(out[key]):
            item = {"metric": item} if isinstance(item, str) else item
            if not isinstance(item, dict):
                raise TaskFileError(f"{where}: {key}[{i}] must be a mapping")
            if key == "metric_list" and "hf_evaluate" in item:
                raise TaskFileError(f"{where}: {key}[{i}]: hf_evaluate metrics are not "
                                    "supported (they download metric code)")
            _unknown(item, {f.name for f in fields(schema)}, f"{where}: {key}[{i}]", "metric")
            items.append(item)
        out[key] = items
    for key, schema in _NESTED_DICTS.items():
        if out.get(key) is None:
            continue
        if not isinstance(out[key], dict):
            raise TaskFileError(f"{where}: {key} must be a mapping")
        hint = " (other sampling settings belong in the sampling group: sampling.top_p=...)" \
            if key == "generation_kwargs" else ""
        try:
            _unknown(out[key], {f.name for f in fields(schema)}, f"{where}: {key}", key)
        except TaskFileError as e:
            raise TaskFileError(f"{e}{hint}") from None
    gen = out.get("generation_kwargs")
    if gen is not None and isinstance(gen.get("until"), str):
        out["generation_kwargs"] = {**gen, "until": [gen["until"]]}
    filters = out.get("filter_list")
    if filters is not None and not isinstance(filters, list):
        raise TaskFileError(f"{where}: filter_list must be a list of mappings with `name` and "
                            "`filter`")
    for i, flt in enumerate(filters or []):
        if not isinstance(flt, dict) or set(flt) - {"name", "filter"}:
            raise TaskFileError(f"{where}: filter_list[{i}] must have exactly `name` and "
                                "`filter` (a list of steps)")
        steps = flt.get("filter")
        if steps is not None and not isinstance(steps, list):
            raise TaskFileError(f"{where}: filter_list[{i}].filter must be a list of steps "
                                "(mappings with `function`)")
        for j, step in enumerate(steps or []):
            if not isinstance(step, dict):
                raise TaskFileError(f"{where}: filter_list[{i}].filter[{j}] must be a mapping "
                                    f"with `function`, got {_short(step)}")
            _unknown(step, {f.name for f in fields(FilterStep)},
                     f"{where}: filter_list[{i}].filter[{j}]", "filter")
    return out
