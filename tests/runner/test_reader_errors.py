"""Every reader path on every kind of bad file (issue 25.4): the runner's datasets (jsonl:,
hf: with a local file, the embed pairs), a task's data files, lm-eval task files and recipes,
each given a missing file, a directory, a file it may not read, bytes that are not UTF-8, a
malformed row and a too-deep structure. Each is one line of the reader's own error type that
names the file, the line where there is one, and the fix."""
from __future__ import annotations

import builtins
import json
import os
import pathlib
import re

import pytest

from runner.datasets import DatasetError, load_examples
from runner.embedding_task import load_pairs
from runner.run.recipe import RecipeError, load_recipe
from runner.tasks.cli_specs import task_node
from runner.tasks.data import TaskDataError
from runner.tasks.lm_eval_task import build
from runner.tasks.yaml_loader import TaskFileError
from tests.runner.tasks import helpers

GOOD_ROW = {"id": "a", "prompt": "p", "answer": "x", "sentence1": "s", "sentence2": "t",
            "score": 1.0, "q": "Pick", "options": ["a", "b"], "gold": 0}


def _task_data(path):
    node = {"task": "t", "dataset_path": "json", "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "options",
            "doc_to_target": "gold", "dataset_kwargs": {"data_files": {"test": str(path)}}}
    return build(helpers.run_config(node)).docs()


# reader name -> (read(path), error type, file suffix, "row" files or YAML)
READERS = {
    "jsonl": (lambda p: load_examples({"source": f"jsonl:{p}", "reference_field": "answer"}),
              DatasetError, ".jsonl", "rows"),
    "hf_file": (lambda p: load_examples({"source": f"hf:{p}", "reference_field": "answer"}),
                DatasetError, ".jsonl", "rows"),
    "embed_pairs": (lambda p: load_pairs(f"jsonl:{p}"), DatasetError, ".jsonl", "rows"),
    "task_data": (_task_data, TaskDataError, ".jsonl", "rows"),
    "task_file": (lambda p: task_node(f"lmeval:{p}"), TaskFileError, ".yaml", "yaml"),
    "recipe": (lambda p: load_recipe(str(p)), RecipeError, ".yaml", "yaml"),
}
GOOD_YAML = "task: t\ndataset_path: json\n"


def _good(kind: str) -> bytes:
    if kind == "yaml":
        return GOOD_YAML.encode()
    return "".join(json.dumps(dict(GOOD_ROW, id=f"r{i}")) + "\n" for i in range(3)).encode()


def _error(reader, path):
    read, error, _, _ = READERS[reader]
    with pytest.raises(error) as e:
        read(path)
    message = str(e.value)
    assert "\n" not in message, message
    assert str(path) in message or str(path.resolve()) in message, message
    return message


def _line(message: str, line: int) -> bool:
    return re.search(rf"(:{line}:| line {line}:)", message) is not None


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_file(tmp_path, reader):
    path = tmp_path / f"nope{READERS[reader][2]}"
    assert re.search(r"not found|no such", _error(reader, path))


@pytest.mark.parametrize("reader", [r for r in READERS if r != "hf_file"])  # hf:DIR is a source
def test_a_directory_instead_of_a_file(tmp_path, reader):
    path = tmp_path / f"dir{READERS[reader][2]}"
    path.mkdir()
    assert re.search(r"is a (directory|folder)", _error(reader, path))


@pytest.fixture
def deny(monkeypatch):
    """deny(path): reading `path` raises PermissionError, as a file mode 000 does (also when
    the tests run as root, who may read anything)."""
    denied = set()
    real_open, real_read_bytes = builtins.open, pathlib.Path.read_bytes

    def _check(file):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))

    def fake_open(file, *a, **kw):
        _check(file)
        return real_open(file, *a, **kw)

    def fake_read_bytes(self):
        _check(self)
        return real_read_bytes(self)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", fake_read_bytes)
    return lambda path: denied.add(os.path.abspath(path))


@pytest.mark.parametrize("reader", READERS)
def test_a_file_it_may_not_read(tmp_path, reader, deny):
    _, _, suffix, kind = READERS[reader]
    path = tmp_path / f"locked{suffix}"
    path.write_bytes(_good(kind))
    deny(path)
    message = _error(reader, path)
    assert "Permission denied" in message and "check its permissions" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads mode 000 files")
def test_mode_000_for_real(tmp_path):
    path = tmp_path / "locked.jsonl"
    path.write_bytes(_good("rows"))
    path.chmod(0)
    try:
        assert "Permission denied" in _error("jsonl", path)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("reader", READERS)
def test_bytes_that_are_not_utf8_name_the_line(tmp_path, reader):
    _, _, suffix, kind = READERS[reader]
    path = tmp_path / f"latin1{suffix}"
    bad = b"description: caf\xe9\n" if kind == "yaml" else \
        json.dumps(dict(GOOD_ROW, id="z")).encode()[:-2] + b', "x": "caf\xe9"}\n'
    path.write_bytes(_good(kind) + bad)
    message = _error(reader, path)
    line = 3 if kind == "yaml" else 4
    assert _line(message, line) and "UTF-8" in message, message


@pytest.mark.parametrize("reader", READERS)
def test_a_malformed_row_names_the_line(tmp_path, reader):
    _, _, suffix, kind = READERS[reader]
    path = tmp_path / f"bad{suffix}"
    bad = b"doc_to_text: [unclosed\n" if kind == "yaml" else b'{"id": "z", "prompt": \n'
    path.write_bytes(_good(kind) + bad)
    message = _error(reader, path)
    assert _line(message, 3 if kind == "yaml" else 4), message
    assert re.search(r"JSON|YAML", message), message


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.timeout(20)
@pytest.mark.parametrize("depth", [120, 5000, 100_000])  # 100000: PyYAML was quadratic
def test_a_too_deep_structure_names_the_line(tmp_path, reader, depth):
    _, _, suffix, kind = READERS[reader]
    path = tmp_path / f"deep{suffix}"
    if kind == "yaml":
        bad = ("description: " + "[" * depth + "]" * depth + "\n").encode()
    else:
        bad = (json.dumps(dict(GOOD_ROW, id="z"))[:-1] + ', "x": ' + "[" * depth + "]" * depth
               + "}\n").encode()
    path.write_bytes(_good(kind) + bad)
    message = _error(reader, path)
    assert _line(message, 3 if kind == "yaml" else 4), message
    assert "flatten" in message, message


@pytest.mark.parametrize("reader", ["task_file", "recipe"])
@pytest.mark.parametrize("text", ["a: &x [*x]\n", "".join(
    f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" if i else "l0: &l0 [x]\n"
    for i in range(10))], ids=["self_alias", "alias_bomb"])
def test_yaml_aliases_that_hold_themselves_or_explode(tmp_path, reader, text):
    path = tmp_path / "a.yaml"
    path.write_text(text)
    message = _error(reader, path)
    assert "alias" in message and re.search(r"a\.yaml:\d+: ", message), message


def test_an_edited_local_folder_is_read_again(tmp_path, monkeypatch):
    """datasets keys a local folder's prepared copy by its card alone; the runner does not."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = [{"id": "a", "prompt": "p", "answer": "x"}]
    folder = helpers.write_hub_dataset(tmp_path / "one", "owner/set", {None: {"validation": rows}})
    other = helpers.write_hub_dataset(tmp_path / "two", "owner/set", {None: {"validation": [
        {"id": "b", "prompt": "q", "answer": "y"}, {"id": "c", "prompt": "r", "answer": "z"}]}})
    cfg = {"reference_field": "answer"}
    assert [e.id for e in load_examples({"source": f"hf:{folder}", **cfg})[0]] == ["a"]
    assert [e.id for e in load_examples({"source": f"hf:{other}", **cfg})[0]] == ["b", "c"]
    helpers.write_hub_dataset(tmp_path / "one", "owner/set", {None: {"validation": [
        {"id": "d", "prompt": "s", "answer": "w"}, {"id": "e", "prompt": "t", "answer": "v"}]}})
    assert [e.id for e in load_examples({"source": f"hf:{folder}", **cfg})[0]] == ["d", "e"]
