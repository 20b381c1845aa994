"""Property tests of the lm-eval task-file parser (issue 25.2): arbitrary YAML documents, raw
bytes and mutated valid task files, taken the way `task=lmeval:FILE` takes them

    task_node("lmeval:FILE")  -> the node typed as Hydra types it (OmegaConf.to_object of
    TaskConfig) -> spec.resolve -> lm_eval_task.build (no data is read)

either build a task or raise one of the task layer's own errors (runner/cli.py's TASK_ERRORS),
one line long, a TaskFileError naming the file; never a bare KeyError, TypeError,
AttributeError, RecursionError or an OmegaConf error, and never a hang (YAML alias bombs and
self-referencing aliases included)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
import yaml

from runner.cli import TASK_ERRORS
from runner.tasks.cli_specs import task_node
from runner.tasks.lm_eval_task import build
from runner.tasks.yaml_loader import GROUP_FIELDS, TASK_FIELDS, UNSUPPORTED, TaskFileError
from tests.fuzz import SIZES, fuzz
from tests.runner.tasks import helpers

VALID = {"task": "t", "dataset_path": "json", "test_split": "test",
         "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": ["a", "b"],
         "doc_to_target": 0}
GENERATE = {"task": "g", "dataset_path": "json", "test_split": "test",
            "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8},
            "metric_list": [{"metric": "exact_match", "ignore_case": True}],
            "filter_list": [{"name": "f", "filter": [{"function": "regex",
                                                      "regex_pattern": "(\\d+)"},
                                                     {"function": "take_first"}]}],
            "fewshot_config": {"sampler": "first_n"}, "num_fewshot": 1}
KEYS = sorted(TASK_FIELDS | GROUP_FIELDS | set(UNSUPPORTED) | {"include", "tag"})
NESTED_KEYS = ["metric", "aggregation", "ignore_case", "name", "filter", "function",
               "regex_pattern", "until", "max_gen_toks", "do_sample", "sampler", "split",
               "samples", "weight_by_size", "group", "task", "hf_evaluate"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                    st.text(max_size=6), st.sampled_from(["t", "g", "m", "json", "test", "acc",
                                                          "mean", "generate_until"]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(NESTED_KEYS + KEYS),
                                                      st.text(max_size=4), st.integers(0, 3)),
                                            inner, max_size=3)),
    max_leaves=8)


@st.composite
def documents(draw):
    """A task file's mapping: known and unknown keys with values of any shape."""
    keys = draw(st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), max_size=6))
    return {k: draw(values) for k in keys}


@st.composite
def mutated(draw):
    """A valid task (or group of it) with a few keys replaced, dropped or added."""
    base = dict(draw(st.sampled_from([VALID, GENERATE])))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "drop", "add", "nest"]))
        key = draw(st.sampled_from(sorted(base)))
        if op == "set":
            base[key] = draw(values)
        elif op == "drop":
            base.pop(key)
        elif op == "add":
            base[draw(st.sampled_from(KEYS))] = draw(values)
        elif isinstance(base.get(key), dict):
            base[key] = {**base[key], draw(st.sampled_from(NESTED_KEYS)): draw(values)}
        elif isinstance(base.get(key), list) and base[key] and isinstance(base[key][0], dict):
            base[key] = [{**base[key][0], draw(st.sampled_from(NESTED_KEYS)): draw(values)}]
    return base


# Raw texts for what a YAML parser does beyond plain data.
SNIPPETS = [
    "a: &x [*x]\ntask: t\n",  # a list that holds itself
    "task: &x {task: *x}\n",
    "task: t\ndescription: " + "[" * 3000 + "]" * 3000 + "\n",  # deeper than Python's stack
    "task: t\ndoc_to_text: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    # an alias bomb: 9 levels of 9 references (387 million leaves if expanded)
    "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" if i else "l0: &l0 [x]\n"
            for i in range(10)) + "task: t\ndataset_path: json\n",
    "task: t\nprocess_docs: !function utils.process_docs\n",
    "task: !!python/object/apply:os.system [echo hi]\n",
    "task: t\ndescription: !!binary aGVsbG8=\n",
    "task: t\ntag: !!set {a, b}\n",
    "task: 2024-01-01\ndataset_path: json\ntest_split: test\n",
    "? [a, b]\n: 1\ntask: t\n",
    "task: t\ntask: u\n", "--- 1\n--- 2\n", "", "~\n", "- task: t\n", "task: t\n\t x: 1\n",
    "include: 5\ntask: t\n", "include: {a: b}\ntask: t\n", "include: [null]\ntask: t\n",
    "include: t.yaml\ntask: t\n", "include: /\ntask: t\n", "include: ''\ntask: t\n",
    "group: [a]\ntask: [t]\n", "group: {a: 1}\ntask: t\n", "group: 5\ntask: [m]\n",
    "group: g\ntask: [{group: [x]}]\n", "group: g\ntask: [{task: [x]}]\n",
    "group: g\ntask: [[m]]\n", "group: g\ntask: m\ntag: {x: 1}\n", "task: t\ntag: [[x]]\n",
    "task: t\ntag: [{a: 1}]\n", "task: t\ntag: 5\n", "task: {a: 1}\n", "task: [t]\n",
]


def _write(folder: Path, main, others: dict) -> Path:
    for name, doc in others.items():
        (folder / name).write_text(yaml.safe_dump(doc, allow_unicode=True))
    path = folder / "t.yaml"
    if isinstance(main, bytes):
        path.write_bytes(main)
    elif isinstance(main, str):
        path.write_text(main)
    else:
        path.write_text(yaml.safe_dump(main, allow_unicode=True))
    return path


def _load_and_build(main, others: dict | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _write(folder, main, others or {})
        try:
            build(helpers.run_config(task_node(f"lmeval:{path}")))
        except Exception as e:  # noqa: BLE001 - the property is about the type
            message = str(e)
            assert type(e).__name__ in TASK_ERRORS, f"{type(e).__name__}: {message[:500]}"
            assert "\n" not in message and message, message[:500]
            assert len(message) < 2000, message[:500]
            if isinstance(e, TaskFileError):
                assert str(folder.resolve()) in message or str(folder) in message, message


@pytest.mark.timeout(120)
@SIZES
def test_any_task_document_builds_or_names_the_problem(size):
    fuzz(size, documents(), lambda doc: _load_and_build(doc), fast=80)


@pytest.mark.timeout(120)
@SIZES
def test_mutated_task_files_build_or_name_the_problem(size):
    fuzz(size, mutated(), lambda doc: _load_and_build(doc), fast=80)


@st.composite
def folders(draw):
    """The main file with an include and a group over other files of the folder."""
    member = draw(st.one_of(mutated(), documents()))
    main = {"group": draw(st.sampled_from(["G", "t", "m"])),
            "task": draw(st.lists(st.one_of(st.sampled_from(["t", "g", "m", "tagged"]), values),
                                  max_size=3)),
            "include": draw(st.sampled_from(["_inc.yaml", "m.yaml", "t.yaml", "nope.yaml"]))}
    if draw(st.booleans()):
        main.update(draw(documents()))
    inc = draw(st.one_of(documents(), mutated()))
    return main, {"_inc.yaml": inc, "m.yaml": {**member, "tag": draw(st.one_of(
        st.just("tagged"), values))}}


@pytest.mark.timeout(120)
@SIZES
def test_groups_includes_and_tags_build_or_name_the_problem(size):
    fuzz(size, folders(), lambda drawn: _load_and_build(*drawn), fast=60)


@pytest.mark.timeout(120)
@SIZES
def test_raw_bytes_and_text_load_or_name_the_problem(size):
    fuzz(size, st.one_of(st.binary(max_size=64), st.text(max_size=64)),
         lambda raw: _load_and_build(raw), fast=60)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("text", SNIPPETS, ids=range(len(SNIPPETS)))
def test_yaml_features_load_or_name_the_problem(text):
    _load_and_build(text)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index,expected", [
    (0, "t.yaml:1: nested more than 100 levels deep (or a YAML alias that holds itself)"),
    (2, "t.yaml:2: nested too deeply (at most 100 levels); flatten it"),
    (4, "t.yaml:1: more than 100000 values once YAML aliases are expanded"),
    (17, "t.yaml: include must be a file name or a list of file names, got 5"),
    (23, "t.yaml: group must be a name (a string), got ['a']"),
    (26, "t.yaml: group g: a member's group must be a name, got ['x']"),
    (32, "t.yaml (task t): tag must be a name or a list of names, got 5"),
])
def test_the_failures_the_properties_found_read_as_one_line(tmp_path, index, expected):
    path = tmp_path / "t.yaml"
    path.write_text(SNIPPETS[index])
    with pytest.raises(TaskFileError) as e:
        task_node(f"lmeval:{path}")
    assert str(e.value).startswith(f"{tmp_path}/{expected}"), str(e.value)


def test_a_group_that_contains_itself_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("group: a\ntask: [b]\n")
    (tmp_path / "b.yaml").write_text("group: b\ntask: [a]\n")
    with pytest.raises(TaskFileError, match=r"group a contains itself \(a -> b -> a\)"):
        task_node(f"lmeval:{tmp_path / 'a.yaml'}")


@pytest.mark.parametrize("change,needle", [
    ({"generation_kwargs": {"until": 5}}, "generation_kwargs.until must be a string or a list"),
    ({"filter_list": 1}, "filter_list must be a list of mappings"),
    ({"filter_list": [{"name": "f", "filter": [3]}]}, r"filter_list\[0\]\.filter\[0\] must be"),
    ({"metric_list": [{}]}, r"metric_list\[0\]\.metric is required but not set"),
])
def test_wrong_shapes_inside_a_valid_file_name_the_key(tmp_path, change, needle):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({**GENERATE, **change}))
    with pytest.raises(Exception) as e:
        build(helpers.run_config(task_node(f"lmeval:{path}")))
    assert type(e.value).__name__ in TASK_ERRORS
    assert re.search(needle, str(e.value)), str(e.value)
