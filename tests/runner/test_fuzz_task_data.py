"""Property tests of a task's data (issue 25.2 / 25.4): lm-eval tasks whose local data file
(dataset_path json or csv, dataset_kwargs.data_files) holds random bytes, non-UTF-8, truncated,
huge or deeply nested rows, wrong types and missing fields, rendered by the task's templates
(lm_eval_task.build(...).docs() reads the rows and renders every doc's text, choices and
target). Each either gives docs or raises one of the task layer's errors (runner/cli.py's
TASK_ERRORS), one line long, a TaskDataError naming the file; never a bare exception or a hang."""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest

from runner.cli import TASK_ERRORS
from runner.tasks.data import TaskDataError
from runner.tasks.lm_eval_task import build
from tests.fuzz import SIZES, fuzz
from tests.runner.tasks import helpers


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path_factory, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE",
                        str(tmp_path_factory.mktemp("hf_cache")))


# Strings that a template turns into something else: digits become ints, "[...]" a list.
tricky = st.sampled_from(["0", "1", "007", "²", "٣", "9" * 5000, "[1, 2]", "['a', 'b']", "[",
                          "[" * 500 + "]" * 500, "[[", "{{q}}", "", " ", "\n", "a\x00b"])
leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False),
                 st.text(max_size=6), tricky)
value = st.one_of(tricky, st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "text"]), inner,
                                                 max_size=2)), max_leaves=5))


@st.composite
def task_rows(draw):
    row = {"q": "Pick one", "options": ["a", "b"], "gold": 0, "a": "x"}
    for key in sorted(row):
        how = draw(st.sampled_from(["keep", "keep", "tricky", "tricky", "value", "drop"]))
        if how == "drop":
            row.pop(key)
        elif how != "keep":
            row[key] = draw(tricky if how == "tricky" else value)
    return row


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["q", "options", "gold", "a"])
    for r in rows:
        writer.writerow([json.dumps(r.get(k)) if not isinstance(r.get(k), str) else r[k]
                         for k in ("q", "options", "gold", "a")])
    return buf.getvalue().encode()


@st.composite
def one_odd_field(draw):
    """A good row with one field a string that templates convert (digits, lists)."""
    row = {"q": "Pick one", "options": ["a", "b"], "gold": 0, "a": "x"}
    row[draw(st.sampled_from(sorted(row)))] = draw(tricky)
    return row


@st.composite
def data_files(draw, faults: bool = True):
    kind = draw(st.sampled_from(["jsonl", "jsonl", "json", "csv"]))
    rows = draw(st.lists(task_rows() if faults else one_odd_field(), min_size=1, max_size=4))
    if kind == "jsonl":
        data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    elif kind == "json":
        data = json.dumps(rows).encode()
    else:
        data = _csv(rows)
    fault = draw(st.sampled_from(["none", "none", "none", "bytes", "cut", "nonutf8", "deep",
                                  "blank", "huge"] if faults else ["none"]))
    if fault == "bytes":
        data = draw(st.binary(max_size=40))
    elif fault == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif fault == "nonutf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xe9\xff" + data[at:]
    elif fault == "deep":
        depth = draw(st.sampled_from([62, 64, 5000]))
        deep = '{"q": "x", "options": ["a"], "gold": 0, "a": ' + "[" * depth + "]" * depth + "}"
        data = data + deep.encode() + b"\n" if kind == "jsonl" else \
            ("[" + deep + "]").encode()
    elif fault == "blank":
        data = b"\n\n \n"
    elif fault == "huge":
        data = json.dumps({"q": "x" * 300_000, "options": ["a"], "gold": 0, "a": "y"}).encode() \
            + b"\n"
    return kind, data


@st.composite
def task_nodes(draw):
    out = draw(st.sampled_from(["multiple_choice", "generate_until"]))
    node = {"task": "t", "dataset_path": "json", "test_split": "test", "output_type": out,
            "doc_to_text": draw(st.sampled_from(["{{q}}", "q", "{{q}} {{a}}", "{{ q.x }}",
                                                 "{{q|length}}"]))}
    if out == "multiple_choice":
        node["doc_to_choice"] = draw(st.sampled_from(["{{options}}", "options", ["a", "b"],
                                                      {"A": "a", "B": "b"}]))
        node["doc_to_target"] = draw(st.sampled_from(["gold", "{{gold}}", 0, "{{a}}"]))
    else:
        node["doc_to_target"] = draw(st.sampled_from(["a", "{{a}}", "{{gold}}"]))
    return node


def _docs(drawn) -> None:
    (kind, data), node = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{kind}"
        path.write_bytes(data)
        node = {**node, "dataset_path": "csv" if kind == "csv" else "json",
                "dataset_kwargs": {"data_files": {"test": str(path)}}}
        try:
            docs = build(helpers.run_config(node)).docs()
        except Exception as e:  # noqa: BLE001 - the property is about the type
            message = str(e)
            assert type(e).__name__ in TASK_ERRORS, f"{type(e).__name__}: {message[:300]}"
            assert "\n" not in message and len(message) < 3000, message[:300]
            if isinstance(e, TaskDataError):
                assert str(path) in message, message[:300]
            return
        assert docs and all(isinstance(d.doc, dict) for d in docs)


@pytest.mark.timeout(300)
@SIZES
def test_task_data_files_give_docs_or_name_the_problem(size):
    fuzz(size, st.tuples(data_files(), task_nodes()), _docs, fast=30, deadline_ms=None)


@pytest.mark.timeout(300)
@SIZES
def test_field_values_that_templates_convert_give_docs_or_name_the_doc(size):
    fuzz(size, st.tuples(data_files(faults=False), task_nodes()), _docs, fast=30,
         deadline_ms=None)
