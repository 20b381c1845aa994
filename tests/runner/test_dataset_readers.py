"""The runner's own dataset readers on bad and local input: hf: with one local file (json, jsonl,
csv, parquet), hf:parquet refused instead of scanning the working directory, offline decided up
front in one line, and jsonl files that are not UTF-8, not JSON or too deep, each one line
naming the file, the line and the fix (issues 25.4 and 27.9)."""
from __future__ import annotations

import json
import time

import pytest

from runner.datasets import DatasetError, load_examples
from runner.embedding_task import load_pairs

ROWS = [{"id": f"r{i}", "prompt": f"Question {i}?", "answer": f"a{i}"} for i in range(3)]
GENERIC = {"reference_field": "answer"}


def _write(path, kind: str):
    import datasets

    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "json":
        path.write_text(json.dumps(ROWS))
    else:
        ds = datasets.Dataset.from_list(ROWS)
        ds.to_csv(str(path)) if kind == "csv" else ds.to_parquet(str(path))
    return path


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_hf_accepts_one_local_file(tmp_path, monkeypatch, kind, online):
    if online:  # no offline flag and no hub: a local file needs neither
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    path = _write(tmp_path / f"data.{kind}", kind)
    examples, info = load_examples({"source": f"hf:{path}", **GENERIC})
    assert [e.id for e in examples] == ["r0", "r1", "r2"]
    assert examples[1].prompt == "Question 1?" and examples[1].references == ["a1"]
    assert info.num_rows_total == 3


def test_hf_local_file_split_and_relative_path(tmp_path, monkeypatch):
    _write(tmp_path / "d.jsonl", "jsonl")
    monkeypatch.chdir(tmp_path)
    assert len(load_examples({"source": "hf:d.jsonl::train", **GENERIC})[0]) == 3
    with pytest.raises(DatasetError, match="single file has no configs"):
        load_examples({"source": "hf:d.jsonl:cfg", **GENERIC})


@pytest.mark.parametrize("name", ["parquet", "json", "csv"])
def test_a_format_name_alone_is_refused_not_a_scan_of_the_cwd(tmp_path, monkeypatch, name):
    _write(tmp_path / "stray.parquet", "parquet")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=f"hf:{name} names a file format"):
        load_examples({"source": f"hf:{name}", **GENERIC})


def test_offline_flags_fail_at_once_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DatasetError) as e:
        load_examples({"source": "hf:no-such-owner-xyz/no_such_set"})
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "offline" in msg and "\n" not in msg and "HF_HUB_OFFLINE=1" in msg


def test_an_unreachable_hub_says_offline_without_retries(monkeypatch):
    # no offline flag, and the hub is not there (a closed loopback port): one line, no retries
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.time()
    with pytest.raises(DatasetError) as e:
        load_examples({"source": "hf:squad"})
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "offline" in msg and "HF_HUB_OFFLINE=1" in msg and "\n" not in msg


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"id": "x", "prompt": "\xff\xfe"}\n')
    with pytest.raises(DatasetError) as e:
        load_examples({"source": f"jsonl:{path}", **GENERIC})
    assert str(e.value) == (f"{path}: line 2: not UTF-8 (byte 0xff at column 24); save the file "
                            "as UTF-8")


@pytest.mark.parametrize("depth", [150, 5000])
def test_too_deep_rows_name_their_line(tmp_path, depth):
    path = tmp_path / "d.jsonl"
    deep = '{"id": "x", "prompt": "p", "answer": "a", "extra": ' + "[" * depth + "]" * depth + "}"
    path.write_text(json.dumps(ROWS[0]) + "\n" + deep + "\n")
    with pytest.raises(DatasetError) as e:
        load_examples({"source": f"jsonl:{path}", **GENERIC})
    assert str(e.value).startswith(f"{path}: line 2: JSON nested")
    assert "flatten the row" in str(e.value)


def test_malformed_rows_name_their_line_and_the_fix(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DatasetError, match=r"line 2: expected a JSON object, got list"):
        load_examples({"source": f"jsonl:{path}", **GENERIC})
    path.write_text(json.dumps(ROWS[0]) + '\n{"id": \n' + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: bad JSON: .* one JSON object"):
        load_examples({"source": f"jsonl:{path}", **GENERIC})


def test_similarity_pairs_use_the_same_reader(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"sentence1": "a", "sentence2": "b", "score": 1}\n\xc3\x28\n')
    with pytest.raises(DatasetError, match="pairs.jsonl: line 2: not UTF-8"):
        load_pairs(f"jsonl:{path}")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"sentence1": f"s{i}", "sentence2": f"t{i}", "score": i})
                            + "\n" for i in range(5)))
    assert [p["id"] for p in load_pairs(f"jsonl:{good}", limit=3)] == \
        ["pair-1", "pair-2", "pair-3"]
