"""Property tests of the runner's dataset readers (issue 25.2 / 25.4): jsonl:, hf: with one local
file (jsonl, json, csv, parquet) or a hub-layout folder, and the similarity pairs of mode=embed,
fed random bytes, non-UTF-8, truncated and huge lines, deeply nested rows, wrong types and
missing fields. Each either reads (and then every Example is well formed: unique ids, a prompt
or messages of text, references of text) or raises DatasetError: one line naming the file, and
the line when the fault is in one; never another exception and never a hang."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest

from runner.datasets import DatasetError, load_examples
from runner.embedding_task import load_pairs
from tests.fuzz import SIZES, fuzz


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path_factory, monkeypatch):
    """Every file read through `datasets` is prepared in a cache of this test's own."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE",
                        str(tmp_path_factory.mktemp("hf_cache")))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)
FIELDS = ["id", "prompt", "answer", "question", "context", "answers", "text",
          "sentence1", "sentence2", "score"]


@st.composite
def rows(draw):
    """A row close to what the readers expect: some fields right, some of any type."""
    row = {"id": f"r{draw(st.integers(0, 5))}", "prompt": "Q?", "answer": "a",
           "sentence1": "s", "sentence2": "t", "score": 1.5}
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "drop"]))
        key = draw(st.sampled_from(FIELDS))
        if op == "set":
            row[key] = draw(json_values)
        else:
            row.pop(key, None)
    if draw(st.booleans()):  # the squad preset's columns
        row.update(context="c", question="q?",
                   answers=draw(st.one_of(st.just({"text": ["a"], "answer_start": [0]}),
                                          json_values)))
    return row


def _deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a": ' * depth + "1" + "}" * depth


@st.composite
def jsonl_lines(draw):
    """One line of a .jsonl file, as bytes (no newline)."""
    kind = draw(st.sampled_from(["row", "row", "row", "json", "bytes", "truncated", "deep",
                                 "nonutf8", "surrogate", "huge", "nan", "blank"]))
    if kind == "row":
        return json.dumps(draw(rows()), ensure_ascii=draw(st.booleans())).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=30)).replace(b"\n", b" ")
    if kind == "truncated":
        text = json.dumps(draw(rows())).encode()
        return text[:draw(st.integers(0, len(text) - 1))]
    if kind == "deep":
        depth = draw(st.sampled_from([40, 62, 63, 64, 99, 100, 101, 2000, 100000]))
        return ('{"id": "deep", "prompt": "p", "answer": "a", "x": '
                + _deep(depth, draw(st.sampled_from(["list", "dict"]))) + "}").encode()
    if kind == "nonutf8":
        text = json.dumps(draw(rows())).encode()
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe9", b"\xed\xa0\x80"])) \
            + text[at:]
    if kind == "surrogate":  # an escaped lone surrogate: valid JSON, not encodable text
        return b'{"id": "s", "prompt": "bad \\ud800 here", "answer": "a"}'
    if kind == "huge":
        return json.dumps({"id": "huge", "prompt": "x" * 300_000, "answer": "a"}).encode()
    if kind == "nan":
        return b'{"id": "n", "prompt": "p", "answer": NaN, "score": Infinity}'
    return draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))


@st.composite
def jsonl_files(draw):
    lines = draw(st.lists(jsonl_lines(), min_size=0, max_size=6))
    bom = b"\xef\xbb\xbf" if draw(st.integers(0, 9)) == 0 else b""
    return bom + b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"\r\n"]))


CONFIGS = [{"reference_field": "answer"}, {}, {"preset": "squad"},
           {"template": "Q: {prompt}\\nA:", "reference_field": "answer", "chat": True,
            "system_prompt": "Be brief."},
           {"prompt_field": "prompt", "reference_field": "answers", "id_field": "id"}]


def _check_examples(examples, info) -> None:
    assert len({e.id for e in examples}) == len(examples) == info.num_examples
    for e in examples:
        assert (e.prompt is None) != (e.messages is None)
        text = e.prompt if e.prompt is not None else e.messages[-1]["content"]
        assert isinstance(text, str)
        text.encode("utf-8")  # what the tokenizer gets is text
        assert e.references and all(isinstance(r, str) for r in e.references)
    assert re.fullmatch(r"[0-9a-f]{64}", info.fingerprint)


def _line_of(message: str, path: Path):
    match = re.match(re.escape(str(path)) + r"(?::(\d+):|: line (\d+):)", message)
    return int(match.group(1) or match.group(2)) if match else None


def _expect_clear(e: BaseException, path: Path, n_lines: int | None = None) -> None:
    message = str(e)
    assert isinstance(e, DatasetError), f"{type(e).__name__}: {message[:300]}"
    assert "\n" not in message and len(message) < 3000, message[:300]
    assert str(path) in message or path.name in message, message[:300]
    line = _line_of(message, path)
    if line is not None and n_lines is not None:
        assert 1 <= line <= n_lines, message[:300]


def _read(source: str, path: Path, cfg: dict, n_lines: int | None,
          n_rows: int | None = None) -> None:
    try:
        examples, info = load_examples({"source": source, **cfg})
    except Exception as e:  # noqa: BLE001 - the property is about the type
        _expect_clear(e, path, n_lines)
        return
    _check_examples(examples, info)
    if n_rows is not None:  # these rows, not a copy prepared from other files before
        assert info.num_rows_total == n_rows


def _jsonl_rows(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip(b" \t\r\xef\xbb\xbf"))


def _jsonl(drawn) -> None:
    data, cfg = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_bytes(data)
        n_lines = data.count(b"\n") + 1
        _read(f"jsonl:{path}", path, cfg, n_lines, _jsonl_rows(data))
        try:
            pairs = load_pairs(f"jsonl:{path}")
        except Exception as e:  # noqa: BLE001
            _expect_clear(e, path, n_lines)
        else:
            for p in pairs:
                assert isinstance(p["sentence1"], str) and isinstance(p["sentence2"], str)
                float(p["score"])


@pytest.mark.timeout(120)
@SIZES
def test_jsonl_files_read_or_name_the_file_and_line(size):
    fuzz(size, st.tuples(jsonl_files(), st.sampled_from(CONFIGS)), _jsonl, fast=100)


def _hf_file(drawn) -> None:
    kind, data, cfg = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{kind}"
        path.write_bytes(data)
        _read(f"hf:{path}", path, cfg, data.count(b"\n") + 1 if kind != "parquet" else None,
              _jsonl_rows(data) if kind == "jsonl" else None)


@st.composite
def json_documents(draw):
    doc = draw(st.one_of(st.lists(rows(), max_size=4), json_values,
                         st.fixed_dictionaries({"data": st.lists(rows(), max_size=3)})))
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 1])))
    return draw(st.sampled_from(["whole", "cut", "deep"])), text


@st.composite
def local_files(draw):
    kind = draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]))
    if kind == "jsonl":
        data = draw(jsonl_files())
    elif kind == "json":
        how, text = draw(json_documents())
        data = text.encode()
        if how == "cut":
            data = data[:draw(st.integers(0, max(len(data) - 1, 0)))]
        elif how == "deep":
            data = ('[{"id": "x", "prompt": "p", "answer": "a", "x": '
                    + _deep(draw(st.sampled_from([63, 64, 3000])), "list") + "}]").encode()
    elif kind == "csv":
        data = draw(st.one_of(
            st.binary(max_size=40),
            st.lists(st.lists(st.one_of(st.text(max_size=6), st.just('"'), st.just(",")),
                              min_size=1, max_size=4), max_size=4).map(
                lambda table: ("id,prompt,answer\n" + "\n".join(",".join(r) for r in table))
                .encode()),
            st.just(b"id,prompt,answer\nr1,\"" + b"x" * 200_000 + b"\",a\n")))
    else:
        data = draw(st.one_of(st.binary(max_size=64), parquet_bytes()))
    return kind, data, draw(st.sampled_from(CONFIGS))


@st.composite
def parquet_bytes(draw):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = draw(st.lists(rows(), min_size=0, max_size=3))
    buf = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(table), buf)
    except (pa.ArrowException, TypeError, ValueError):  # rows Arrow cannot hold or write
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{"id": "r", "prompt": "p", "answer": "a"}]), buf)
    data = buf.getvalue()
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return data


@pytest.mark.timeout(300)
@SIZES
def test_local_files_through_hf_read_or_name_the_file(size):
    fuzz(size, local_files(), _hf_file, fast=30, deadline_ms=None)


@st.composite
def hub_folders(draw):
    """A folder in the hub's layout: a README card naming configs and data files."""
    card = draw(st.one_of(
        st.just({"configs": [{"config_name": "default", "data_files": [
            {"split": "validation", "path": "data/validation.jsonl"}]}]}),
        st.fixed_dictionaries({"configs": json_values}), json_values))
    readme = "---\n" + json.dumps(card) + "\n---\n"
    if draw(st.integers(0, 4)) == 0:
        readme = draw(st.binary(max_size=30)).decode("latin-1")
    return readme, draw(jsonl_files()), draw(st.sampled_from([None, "default", "nope"]))


def _hub(drawn) -> None:
    readme, data, config = drawn
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "owner" / "set"  # the same name in every example
        (folder / "data").mkdir(parents=True)
        (folder / "README.md").write_text(readme, encoding="latin-1")
        (folder / "data" / "validation.jsonl").write_bytes(data)
        source = f"hf:{folder}" + (f":{config}" if config else "")
        _read(source, folder, {"reference_field": "answer"}, None, _jsonl_rows(data))


@pytest.mark.timeout(300)
@SIZES
def test_hub_layout_folders_read_or_name_the_folder(size):
    fuzz(size, hub_folders(), _hub, fast=20, deadline_ms=None)
